//! TLS towards the backends, end to end: real Echo backends serving TLS
//! (tokio-rustls + hyper's HTTP/2 server) that may require client
//! certificates and record, per connection, the serial of the client
//! certificate they saw; the gateway in this process, terminating TLS for
//! its clients and using mTLS upstream; clients that keep calling while the
//! test rotates certificates and CAs on disk, writes broken files, and lets
//! a client certificate run up to its expiry.
//!
//! What "TLS everywhere without 3am pages" means here:
//! - a TLS failure towards a backend is `UNAVAILABLE` with a message (and a
//!   `/upstreams` last error) that names the cause;
//! - rotating any certificate, or the CA with an overlap, fails no call, and
//!   new handshakes use the new certificate at once;
//! - connections made with a rotated client certificate close within
//!   `upstream_drain` (plus the pool's 1 s tick) once their calls are done,
//!   and at once when the old certificate is about to expire;
//! - a bad pair on disk keeps the old one in use and is counted in `/certs`
//!   and the metrics;
//! - `/certs` and `grpc_edge_certificate_expiry_timestamp_seconds` list
//!   every loaded certificate.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use grpc_edge::tls::ReloadOptions;
use grpc_edge::{Gateway, ServeOptions};
use http_body_util::BodyExt;
use support::certs::*;
use support::pb::echo_server::{Echo, EchoServer};
use support::{EchoClient, EchoRequest, EchoResponse, config_yaml, echo};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// After a file event, how long the files must be quiet before they are read.
const SETTLE: Duration = Duration::from_millis(100);
/// How often the files are re-read without an event.
const POLL: Duration = Duration::from_secs(1);
/// `upstream_drain` for the rotation tests.
const DRAIN: Duration = Duration::from_secs(2);
/// The pool's connection task checks generations on this tick.
const TICK: Duration = Duration::from_secs(1);
/// Scheduling and measurement slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(750);
/// The server name on the backends' certificates.
const BACKEND_NAME: &str = "echo.internal";

fn reload_options(upstream_drain: Duration) -> ReloadOptions {
    ReloadOptions {
        poll_interval: POLL,
        settle: SETTLE,
        upstream_drain,
        ..ReloadOptions::default()
    }
}

// ---------------------------------------------------------------------------
// The TLS backend

/// One connection the backend accepted (after a successful handshake).
#[derive(Clone, Debug)]
struct ConnRecord {
    /// The serial of the client certificate, when one was presented.
    serial: Option<u64>,
    opened: Instant,
    closed: Option<Instant>,
    /// Calls running on it now (a server stream counts until its last message).
    in_flight: u32,
    calls: u64,
    last_call_end: Option<Instant>,
}

/// What a backend saw: its connections and failed handshakes.
#[derive(Default)]
struct BackendLog {
    conns: Mutex<Vec<ConnRecord>>,
    handshake_errors: Mutex<Vec<String>>,
}

impl BackendLog {
    fn open(&self, serial: Option<u64>) -> usize {
        let mut conns = self.conns.lock().unwrap();
        conns.push(ConnRecord {
            serial,
            opened: Instant::now(),
            closed: None,
            in_flight: 0,
            calls: 0,
            last_call_end: None,
        });
        conns.len() - 1
    }

    fn close(&self, index: usize) {
        self.conns.lock().unwrap()[index].closed = Some(Instant::now());
    }
}

/// Marks requests with the connection they arrived on.
#[derive(Clone)]
struct ConnTag {
    log: Arc<BackendLog>,
    index: usize,
}

/// A call in progress on a connection; ends when dropped.
struct CallGuard(Option<ConnTag>);

impl CallGuard {
    fn new<T>(request: &Request<T>) -> CallGuard {
        let tag = request.extensions().get::<ConnTag>().cloned();
        if let Some(tag) = &tag {
            let mut conns = tag.log.conns.lock().unwrap();
            conns[tag.index].in_flight += 1;
            conns[tag.index].calls += 1;
        }
        CallGuard(tag)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if let Some(tag) = &self.0 {
            let mut conns = tag.log.conns.lock().unwrap();
            conns[tag.index].in_flight -= 1;
            conns[tag.index].last_call_end = Some(Instant::now());
        }
    }
}

#[derive(Clone)]
struct TlsEcho {
    name: Arc<str>,
}

impl TlsEcho {
    fn answer(&self, request: &EchoRequest, sequence: u32) -> EchoResponse {
        EchoResponse {
            message: request.message.clone(),
            served_by: self.name.to_string(),
            sequence,
            ..EchoResponse::default()
        }
    }
}

type EchoStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for TlsEcho {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let _call = CallGuard::new(&request);
        let request = request.into_inner();
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
        }
        Ok(Response::new(self.answer(&request, 0)))
    }

    type ServerStreamStream = EchoStream;

    async fn server_stream(&self, request: Request<EchoRequest>) -> Result<Response<EchoStream>, Status> {
        let call = CallGuard::new(&request);
        let request = request.into_inner();
        let this = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let _call = call;
            for sequence in 0..request.repeat.max(1) {
                tokio::time::sleep(Duration::from_millis(u64::from(request.delay_ms))).await;
                if tx.send(Ok(this.answer(&request, sequence))).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn client_stream(&self, _: Request<Streaming<EchoRequest>>) -> Result<Response<EchoResponse>, Status> {
        Err(Status::unimplemented("not in this backend"))
    }

    type BidiStream = EchoStream;

    async fn bidi(&self, _: Request<Streaming<EchoRequest>>) -> Result<Response<EchoStream>, Status> {
        Err(Status::unimplemented("not in this backend"))
    }
}

/// An Echo backend serving HTTP/2 over TLS on a loopback port. Its rustls
/// configuration can be swapped (new handshakes use the new one).
struct TlsBackend {
    addr: SocketAddr,
    log: Arc<BackendLog>,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl TlsBackend {
    async fn start(name: &str, config: Arc<rustls::ServerConfig>) -> TlsBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(BackendLog::default());
        let config = Arc::new(Mutex::new(config));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let service = TlsEcho { name: Arc::from(name) };
        let (accept_log, accept_config, accept_tasks) = (log.clone(), config.clone(), tasks.clone());
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(accept_config.lock().unwrap().clone());
                let log = accept_log.clone();
                let service = service.clone();
                accept_tasks.lock().unwrap().spawn(async move {
                    let stream = match tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            log.handshake_errors.lock().unwrap().push(e.to_string());
                            return;
                        }
                        Err(_) => {
                            log.handshake_errors.lock().unwrap().push("handshake timed out".into());
                            return;
                        }
                    };
                    let serial = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| serial_of_der(leaf));
                    let index = log.open(serial);
                    let tag = ConnTag {
                        log: log.clone(),
                        index,
                    };
                    let service = tower::ServiceExt::map_request(
                        EchoServer::new(service),
                        move |mut request: http::Request<hyper::body::Incoming>| {
                            request.extensions_mut().insert(tag.clone());
                            request
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(service),
                        )
                        .await;
                    log.close(index);
                });
            }
        });
        TlsBackend {
            addr,
            log,
            config,
            tasks,
        }
    }

    /// New handshakes use `config`; open connections keep theirs.
    fn set_config(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.lock().unwrap() = config;
    }

    fn records(&self) -> Vec<ConnRecord> {
        self.log.conns.lock().unwrap().clone()
    }

    /// Open connections, by the serial of their client certificate (0: none).
    fn open_by_serial(&self) -> BTreeMap<u64, usize> {
        let mut open = BTreeMap::new();
        for record in self.records().iter().filter(|r| r.closed.is_none()) {
            *open.entry(record.serial.unwrap_or(0)).or_insert(0) += 1;
        }
        open
    }

    fn handshake_errors(&self) -> Vec<String> {
        self.log.handshake_errors.lock().unwrap().clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

// ---------------------------------------------------------------------------
// The gateway, its admin endpoints, and clients

struct Gw {
    addr: SocketAddr,
    admin: SocketAddr,
    gateway: Gateway,
    stop: Option<oneshot::Sender<()>>,
    stop_admin: Option<oneshot::Sender<()>>,
    serve: tokio::task::JoinHandle<()>,
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_admin.take() {
            let _ = stop.send(());
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.serve.abort();
    }
}

/// The gateway on loopback ports (main and admin), with `reload` for both
/// the listener's and the upstreams' certificates.
async fn start_gateway(yaml: &str, reload: ReloadOptions) -> Gw {
    let config =
        grpc_edge::config::Config::from_yaml(yaml).unwrap_or_else(|e| panic!("test config invalid: {e}\n{yaml}"));
    let gateway = Gateway::builder()
        .config(config)
        .tls_reload(reload.clone())
        .build()
        .unwrap_or_else(|e| panic!("gateway: {e}\n{yaml}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin) = (listener.local_addr().unwrap(), admin_listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let (stop_admin, admin_stopped) = oneshot::channel::<()>();
    let options = ServeOptions {
        tls_reload: reload,
        ..ServeOptions::default()
    };
    let serve = tokio::spawn(grpc_edge::serve(
        gateway.clone(),
        listener,
        async {
            let _ = stopped.await;
        },
        options,
    ));
    tokio::spawn(grpc_edge::serve_admin(gateway.clone(), admin_listener, async {
        let _ = admin_stopped.await;
    }));
    Gw {
        addr,
        admin,
        gateway,
        stop: Some(stop),
        stop_admin: Some(stop_admin),
        serve,
    }
}

/// `upstreams.echo.tls` (and other upstream keys) as YAML for `config_yaml`.
fn upstream_tls(ca: Option<&std::path::PathBuf>, pair: Option<&str>, dir: &CertDir, server_name: &str) -> String {
    let mut yaml = "tls:\n".to_string();
    if let Some(ca) = ca {
        yaml += &format!("  ca: {}\n", ca.display());
    }
    if let Some(stem) = pair {
        yaml += &format!(
            "  cert: {}\n  key: {}\n",
            dir.path(&format!("{stem}.pem")).display(),
            dir.path(&format!("{stem}.key")).display()
        );
    }
    yaml + &format!("  server_name: {server_name}\n")
}

/// The listener's `tls` section.
fn listener_tls(dir: &CertDir, client_ca: Option<&str>) -> String {
    let mut yaml = format!(
        "tls:\n  cert: {}\n  key: {}\n",
        dir.path("server.pem").display(),
        dir.path("server.key").display()
    );
    if let Some(name) = client_ca {
        yaml += &format!("  client_ca: {}\n", dir.path(name).display());
    }
    yaml
}

/// A GET on the admin listener: status and body.
async fn admin_get(admin: SocketAddr, path: &str) -> (http::StatusCode, String) {
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "admin")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .expect("admin answers within 5 s")
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn admin_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = admin_get(admin, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The value of the one sample of `name` whose labels include every one of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| l.starts_with(&format!("{name}{{"))) {
        if labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))) {
            assert!(found.is_none(), "two samples of {name} match {labels:?}:\n{text}");
            found = line.rsplit(' ').next().and_then(|v| v.parse().ok());
        }
    }
    found
}

/// Handshakes the clients made with the gateway: when, and the serial of
/// the certificate it presented.
#[derive(Default)]
struct Handshakes(Mutex<Vec<(Instant, u64)>>);

/// How the load reaches the gateway.
#[derive(Clone)]
enum Target {
    Plain(SocketAddr),
    /// TLS; the trust roots can change mid-run (a client learning a new CA).
    Tls {
        addr: SocketAddr,
        trust: Arc<Mutex<Arc<rustls::ClientConfig>>>,
        seen: Arc<Handshakes>,
    },
}

impl Target {
    fn tls(addr: SocketAddr, trust: &[&Ca], client: Option<&Leaf>) -> Target {
        Target::Tls {
            addr,
            trust: Arc::new(Mutex::new(client_config_no_resumption_with(trust, client))),
            seen: Arc::new(Handshakes::default()),
        }
    }

    fn trust(&self, cas: &[&Ca]) {
        if let Target::Tls { trust, .. } = self {
            *trust.lock().unwrap() = client_config_no_resumption_with(cas, None);
        }
    }

    fn handshakes(&self) -> Vec<(Instant, u64)> {
        match self {
            Target::Tls { seen, .. } => seen.0.lock().unwrap().clone(),
            Target::Plain(_) => Vec::new(),
        }
    }

    /// A client over one new connection (a new TLS handshake).
    async fn client(&self) -> Result<EchoClient<Channel>, String> {
        let endpoint = |addr: SocketAddr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
        };
        let channel = match self {
            Target::Plain(addr) => endpoint(*addr).connect().await,
            Target::Tls { addr, trust, seen } => {
                let (addr, trust, seen) = (*addr, trust.clone(), seen.clone());
                endpoint(addr)
                    .connect_with_connector(tower::service_fn(move |_: http::Uri| {
                        let config = trust.lock().unwrap().clone();
                        let seen = seen.clone();
                        async move {
                            let stream = tls_connect(addr, config, "localhost").await?;
                            let serial = serial_of_der(&peer_leaf(&stream)).unwrap_or(0);
                            seen.0.lock().unwrap().push((Instant::now(), serial));
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                        }
                    }))
                    .await
            }
        };
        channel.map(EchoClient::new).map_err(|e| format!("{e:?}"))
    }
}

/// A client configuration trusting `cas`, ALPN h2, full handshakes only.
fn client_config_no_resumption_with(cas: &[&Ca], client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut config = (*client_config(cas, client, &[b"h2"])).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// What the load saw.
#[derive(Default)]
struct LoadStats {
    unary_ok: AtomicU64,
    streams_ok: AtomicU64,
    stream_messages: AtomicU64,
    connections: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl LoadStats {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn calls(&self) -> u64 {
        self.unary_ok.load(Ordering::Relaxed) + self.streams_ok.load(Ordering::Relaxed) + self.failed()
    }

    fn failed(&self) -> u64 {
        self.failures.lock().unwrap().len() as u64
    }
}

/// Clients calling the gateway until stopped: unary workers (a new
/// connection every `SESSION`), and stream workers (a new connection per
/// stream of `STREAM_MESSAGES` messages, `STREAM_GAP` apart).
struct Load {
    stop: Arc<AtomicBool>,
    stats: Arc<LoadStats>,
    tasks: JoinSet<()>,
}

const SESSION: Duration = Duration::from_millis(700);
const STREAM_MESSAGES: u32 = 25;
const STREAM_GAP: Duration = Duration::from_millis(100);
/// Upper bounds, so no loop runs away if a stop is missed.
const MAX_CALLS_PER_WORKER: u64 = 50_000;
const MAX_STREAMS_PER_WORKER: u64 = 200;
/// Longest any one call may take before it counts as failed.
const CALL_LIMIT: Duration = Duration::from_secs(10);

impl Load {
    fn start(target: &Target, unary_workers: usize, stream_workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(LoadStats::default());
        let mut tasks = JoinSet::new();
        for worker in 0..unary_workers {
            let (target, stop, stats) = (target.clone(), stop.clone(), stats.clone());
            tasks.spawn(async move {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) && calls < MAX_CALLS_PER_WORKER {
                    let mut client = match target.client().await {
                        Ok(client) => client,
                        Err(e) => {
                            stats.fail(format!("unary worker {worker}: connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let session_end = Instant::now() + SESSION;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < session_end && calls < MAX_CALLS_PER_WORKER
                    {
                        calls += 1;
                        let message = format!("w{worker} c{calls}");
                        match tokio::time::timeout(CALL_LIMIT, client.unary(echo(&message))).await {
                            Ok(Ok(response)) if response.get_ref().message == message => {
                                stats.unary_ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Ok(response)) => {
                                stats.fail(format!("unary {message}: answered {:?}", response.get_ref()))
                            }
                            Ok(Err(status)) => {
                                stats.fail(format!("unary {message}: {:?}: {}", status.code(), status.message()))
                            }
                            Err(_) => stats.fail(format!("unary {message}: no answer within {CALL_LIMIT:?}")),
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            });
        }
        for worker in 0..stream_workers {
            let (target, stop, stats) = (target.clone(), stop.clone(), stats.clone());
            tasks.spawn(async move {
                let mut streams = 0u64;
                while !stop.load(Ordering::Relaxed) && streams < MAX_STREAMS_PER_WORKER {
                    streams += 1;
                    let label = format!("stream worker {worker} #{streams}");
                    let mut client = match target.client().await {
                        Ok(client) => client,
                        Err(e) => {
                            stats.fail(format!("{label}: connect: {e}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    let request = EchoRequest {
                        message: label.clone(),
                        repeat: STREAM_MESSAGES,
                        delay_ms: STREAM_GAP.as_millis() as u32,
                        ..EchoRequest::default()
                    };
                    let outcome = tokio::time::timeout(CALL_LIMIT, async {
                        let mut stream = client
                            .server_stream(request)
                            .await
                            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                            .into_inner();
                        let mut next = 0;
                        while let Some(item) = stream
                            .message()
                            .await
                            .map_err(|s| format!("after {next} messages: {:?}: {}", s.code(), s.message()))?
                        {
                            if item.sequence != next || item.message != label {
                                return Err(format!("message {next} was {item:?}"));
                            }
                            next += 1;
                            stats.stream_messages.fetch_add(1, Ordering::Relaxed);
                        }
                        if next == STREAM_MESSAGES {
                            Ok(())
                        } else {
                            Err(format!("ended after {next} of {STREAM_MESSAGES} messages"))
                        }
                    })
                    .await;
                    match outcome {
                        Ok(Ok(())) => {
                            stats.streams_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => stats.fail(format!("{label}: {e}")),
                        Err(_) => stats.fail(format!("{label}: not done within {CALL_LIMIT:?}")),
                    }
                }
            });
        }
        Load { stop, stats, tasks }
    }

    /// Stops the workers after their current call and waits for them.
    async fn stop(mut self) -> Arc<LoadStats> {
        self.stop.store(true, Ordering::Relaxed);
        let joined = tokio::time::timeout(CALL_LIMIT + Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            self.tasks.abort_all();
            self.stats.fail("a load worker did not stop".into());
        }
        self.stats.clone()
    }
}

/// `calls` unary calls at once over one new client connection, each answered
/// after 300 ms.
async fn burst(target: &Target, calls: usize) -> Result<(), String> {
    let client = target.client().await?;
    let mut running = JoinSet::new();
    for i in 0..calls {
        let mut client = client.clone();
        running.spawn(async move {
            let request = EchoRequest {
                message: format!("burst {i}"),
                delay_ms: 300,
                ..EchoRequest::default()
            };
            match tokio::time::timeout(CALL_LIMIT, client.unary(request)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                Err(_) => Err(format!("no answer within {CALL_LIMIT:?}")),
            }
        });
    }
    let mut errors = Vec::new();
    while let Some(result) = running.join_next().await {
        if let Err(e) = result.unwrap_or_else(|e| Err(e.to_string())) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Waits until `done` holds, checking every 20 ms; panics after `limit`.
async fn eventually(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        if done() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn upstream_status(gw: &Gw) -> grpc_edge::tls::TlsStatus {
    gw.gateway.certs().upstreams[0].1.clone()
}

/// Waits until the upstream TLS reaches `generation`; when it did.
async fn wait_upstream_generation(gw: &Gw, generation: u64, what: &str) -> Instant {
    eventually(what, Duration::from_secs(5), || {
        upstream_status(gw).generation >= generation
    })
    .await
}

fn listener_status(gw: &Gw) -> grpc_edge::tls::TlsStatus {
    gw.gateway.certs().listener.expect("the listener serves TLS")
}

// ---------------------------------------------------------------------------
// 1. mTLS towards a backend, and every way it fails

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_is_accepted_and_each_tls_failure_is_named() {
    let ca = Ca::new("backend CA");
    let backend_leaf = ca.server_for(&[BACKEND_NAME]);
    let backend = TlsBackend::start("mtls", server_config_for_cas(&backend_leaf, &[&ca], &[b"h2"])).await;
    let dir = CertDir::new();
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let gateway_cert = ca.client("gateway");
    dir.write_pair("good", &gateway_cert);
    dir.write_pair("stranger", &Ca::new("another CA").client("gateway"));
    let other_ca_file = dir.write("other-ca.pem", &Ca::new("yet another CA").cert_pem);

    // The right client certificate: the call goes through, the backend saw it.
    let yaml = config_yaml(
        &[backend.addr],
        &upstream_tls(Some(&ca_file), Some("good"), &dir, BACKEND_NAME),
        "",
    );
    let gw = start_gateway(&yaml, reload_options(DRAIN)).await;
    let mut client = Target::Plain(gw.addr).client().await.unwrap();
    let response = client.unary(echo("over mtls")).await.unwrap().into_inner();
    assert_eq!(
        (response.message.as_str(), response.served_by.as_str()),
        ("over mtls", "mtls")
    );
    let records = backend.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(
        records[0].serial,
        Some(gateway_cert.serial),
        "the backend saw the gateway's certificate"
    );
    drop(gw);

    let cases: [(&str, String, &[&str]); 4] = [
        (
            "no client certificate",
            upstream_tls(Some(&ca_file), None, &dir, BACKEND_NAME),
            &["the server requires a client certificate"],
        ),
        (
            "a client certificate from another CA",
            upstream_tls(Some(&ca_file), Some("stranger"), &dir, BACKEND_NAME),
            &["the server rejected our client certificate", "unknown CA"],
        ),
        (
            "the wrong server_name",
            upstream_tls(Some(&ca_file), Some("good"), &dir, "other.internal"),
            &["certificate name mismatch", "expected other.internal"],
        ),
        (
            "a backend certificate from an untrusted CA",
            upstream_tls(Some(&other_ca_file), Some("good"), &dir, BACKEND_NAME),
            &["unknown CA"],
        ),
    ];
    for (case, tls, expected) in cases {
        let accepted_before = backend.records().len();
        let gw = start_gateway(&config_yaml(&[backend.addr], &tls, ""), reload_options(DRAIN)).await;
        let mut client = Target::Plain(gw.addr).client().await.unwrap();
        let status = client.unary(echo(case)).await.expect_err(case);
        assert_eq!(status.code(), tonic::Code::Unavailable, "{case}: {status:?}");
        for fragment in expected {
            assert!(
                status.message().contains(fragment),
                "{case}: the status message does not say {fragment:?}: {:?}",
                status.message()
            );
        }
        assert!(
            status.message().contains("TLS handshake"),
            "{case}: {:?}",
            status.message()
        );

        let upstreams = admin_json(gw.admin, "/upstreams?format=json").await;
        let last_error = upstreams[0]["endpoints"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for fragment in expected {
            assert!(
                last_error.contains(fragment),
                "{case}: /upstreams last_error {last_error:?}"
            );
        }
        let (_, text) = admin_get(gw.admin, "/upstreams").await;
        assert!(text.contains(expected[0]), "{case}: /upstreams text:\n{text}");
        assert_eq!(
            backend.records().len(),
            accepted_before,
            "{case}: the backend accepted a connection"
        );
    }
    // The backend notes the last refusal a moment after the gateway gave up.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while backend.handshake_errors().len() < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let refused = backend.handshake_errors();
    assert!(refused.len() >= 4, "the backend refused the handshakes: {refused:?}");
}

// ---------------------------------------------------------------------------
// 2. Rotation under load

/// Each certificate of a rotated series, and when the gateway was seen
/// loading it.
struct Series {
    serials: Vec<u64>,
    loaded: Vec<Instant>,
}

impl Series {
    fn new(first: u64, at: Instant) -> Series {
        Series {
            serials: vec![first],
            loaded: vec![at],
        }
    }

    fn position(&self, serial: u64) -> Option<usize> {
        self.serials.iter().position(|s| *s == serial)
    }

    /// Handshakes completed after `loaded[k]` + `grace` must use certificate `k` or a later one.
    fn stale_handshakes(&self, handshakes: &[(Instant, u64)], grace: Duration) -> Vec<String> {
        let mut stale = Vec::new();
        for (at, serial) in handshakes {
            let Some(used) = self.position(*serial) else {
                stale.push(format!("serial {serial} is none of ours"));
                continue;
            };
            let newest = self
                .loaded
                .iter()
                .rposition(|loaded| *loaded + grace <= *at)
                .unwrap_or(0);
            if used < newest {
                stale.push(format!(
                    "a handshake {:?} after certificate #{newest} was loaded used #{used}",
                    at.duration_since(self.loaded[newest])
                ));
            }
        }
        stale
    }
}

/// Connections on certificate #k must close within `DRAIN` + `TICK` (+ slack)
/// of certificate #k+1 being loaded, or right after their last call when a
/// call (a long stream) was still running then. Returns the longest time a
/// connection stayed open after its certificate was replaced, the smallest
/// margin a connection closed by the drain (not held by a call) left to its
/// limit, and every connection that stayed longer than allowed.
fn drain_violations(
    series: &Series,
    records: &[ConnRecord],
    now: Instant,
) -> (Duration, Option<Duration>, Vec<String>) {
    let mut longest = Duration::ZERO;
    let mut tightest: Option<Duration> = None;
    let mut violations = Vec::new();
    for record in records {
        let Some(k) = record.serial.and_then(|s| series.position(s)) else {
            violations.push(format!(
                "a connection with client certificate {:?}, none of ours",
                record.serial
            ));
            continue;
        };
        if k + 1 >= series.serials.len() {
            continue;
        }
        // The window starts when the gateway loaded the next certificate
        // (as seen by the test, within 20 ms of it).
        let replaced = series.loaded[k + 1];
        if record.closed.is_none() && record.in_flight > 0 {
            continue;
        }
        let closed = record.closed.unwrap_or(now);
        if closed <= replaced {
            continue;
        }
        let open_for = closed - replaced;
        longest = longest.max(open_for);
        let calls_done = record.last_call_end.unwrap_or(replaced);
        let drain_bound = replaced + DRAIN + TICK;
        let allowed_until = drain_bound.max(calls_done) + SLACK;
        if calls_done <= drain_bound {
            // Closed by the drain, not held by a call: how close it came.
            let margin = allowed_until.saturating_duration_since(closed);
            tightest = Some(tightest.map_or(margin, |t| t.min(margin)));
        }
        if closed > allowed_until {
            violations.push(format!(
                "a connection on client certificate #{k} (serial {}) stayed open {open_for:?} after #{} was loaded \
                 (its last call ended {:?} after that; {} calls)",
                series.serials[k],
                k + 1,
                calls_done.saturating_duration_since(replaced),
                record.calls
            ));
        }
    }
    (longest, tightest, violations)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_every_certificate_and_the_ca_under_load_fails_no_call() {
    const ROTATIONS: usize = 6;
    const EVERY: Duration = Duration::from_secs(2);
    let old = Ca::new("CA A");
    let new = Ca::new("CA B");
    let dir = CertDir::new();

    let backend_a = old.server_for(&[BACKEND_NAME]);
    let backend = TlsBackend::start("b1", server_config_for_cas(&backend_a, &[&old], &[b"h2"])).await;
    let ca_file = dir.write("ca.pem", &old.cert_pem);
    let first_client = old.client("gateway");
    dir.write_pair("client", &first_client);
    let first_server = old.server();
    dir.write_pair("server", &first_server);
    let upstream = upstream_tls(Some(&ca_file), Some("client"), &dir, BACKEND_NAME)
        + "pool:\n  max_streams_per_connection: 2\n  max_connections_per_endpoint: 32\n";
    let yaml = listener_tls(&dir, None) + &config_yaml(&[backend.addr], &upstream, "");
    // Changes are seen through inotify only: this test's rotations are in
    // phase with the poll ticks, and a poll that reads between the cert and
    // key writes counts a spurious reload error (see
    // `a_pair_written_in_two_steps_is_one_reload_even_when_only_polls_see_it`).
    let reload = ReloadOptions {
        poll_interval: Duration::from_secs(60),
        ..reload_options(DRAIN)
    };
    let gw = start_gateway(&yaml, reload).await;
    let target = Target::tls(gw.addr, &[&old], None);

    let started = Instant::now();
    let mut clients = Series::new(first_client.serial, started);
    let mut servers = Series::new(first_server.serial, started);
    let load = Load::start(&target, 4, 2);
    let mut upstream_generation = 1;
    let mut probes: Vec<(usize, Instant, Instant)> = Vec::new();
    let mut burst_calls = 0;
    let mut probe_failures: Vec<String> = Vec::new();

    for k in 1..=ROTATIONS {
        tokio::time::sleep_until((started + EVERY * k as u32).into()).await;
        if k == 3 {
            // The CA rotation begins: everyone trusts old and new roots.
            dir.write("ca.pem", &ca_bundle(&[&old, &new]));
            backend.set_config(server_config_for_cas(&backend_a, &[&old, &new], &[b"h2"]));
            target.trust(&[&old, &new]);
            upstream_generation += 1;
            wait_upstream_generation(&gw, upstream_generation, "the CA bundle old+new is loaded").await;
        }
        let issuer = if k >= 3 { &new } else { &old };
        if k == 3 {
            let backend_b = new.server_for(&[BACKEND_NAME]);
            backend.set_config(server_config_for_cas(&backend_b, &[&old, &new], &[b"h2"]));
        }
        let client_leaf = issuer.client("gateway");
        let server_leaf = issuer.server();
        dir.write_pair("client", &client_leaf);
        dir.write_pair("server", &server_leaf);
        clients.serials.push(client_leaf.serial);
        servers.serials.push(server_leaf.serial);
        upstream_generation += 1;
        let loaded = wait_upstream_generation(&gw, upstream_generation, "the new client certificate is loaded").await;
        clients.loaded.push(loaded);
        let generation = k as u64 + 1;
        let loaded = eventually("the new listener certificate is loaded", Duration::from_secs(5), || {
            listener_status(&gw).generation >= generation
        })
        .await;
        servers.loaded.push(loaded);
        // More calls at once than the open connections take (2 streams
        // each): the gateway must open new upstream connections, with the
        // new certificate.
        let open: usize = backend.open_by_serial().values().sum();
        let calls = (2 * open + 4).min(48);
        burst_calls += calls;
        let probe_started = Instant::now();
        if let Err(e) = burst(&target, calls).await {
            probe_failures.push(format!("burst after rotation #{k}: {e}"));
        }
        probes.push((k, probe_started, Instant::now()));
        if k == 4 {
            // The CA rotation ends: only the new root is trusted.
            dir.write("ca.pem", &new.cert_pem);
            let backend_b = new.server_for(&[BACKEND_NAME]);
            backend.set_config(server_config_for_cas(&backend_b, &[&new], &[b"h2"]));
            target.trust(&[&new]);
            upstream_generation += 1;
            wait_upstream_generation(
                &gw,
                upstream_generation,
                "the CA bundle with only the new root is loaded",
            )
            .await;
        }
    }
    // Every connection on an older certificate has had its drain window.
    tokio::time::sleep(DRAIN + TICK + SLACK).await;
    let stats = load.stop().await;
    let ended = Instant::now();
    let records = backend.records();

    let failures = stats.failures.lock().unwrap().clone();
    let (longest, tightest, violations) = drain_violations(&clients, &records, ended);
    let open = backend.open_by_serial();
    println!(
        "rotation under load: {} calls ({} unary, {} streams of {STREAM_MESSAGES} messages) + {burst_calls} burst \
         calls, {} failed, \
         {} client connections; {} upstream connections, longest open after its certificate was replaced: \
         {longest:?} (calls still running included), tightest margin to drain + tick + {SLACK:?}: {tightest:?}; \
         open at the end by serial: {open:?}",
        stats.calls(),
        stats.unary_ok.load(Ordering::Relaxed),
        stats.streams_ok.load(Ordering::Relaxed),
        failures.len(),
        stats.connections.load(Ordering::Relaxed),
        records.len(),
    );
    // Every check runs; the failures are reported together.
    let mut problems: Vec<String> = Vec::new();
    let mut check = |ok: bool, problem: String| {
        if !ok {
            problems.push(problem);
        }
    };
    check(
        failures.is_empty(),
        format!("{} failed calls: {failures:#?}", failures.len()),
    );
    check(probe_failures.is_empty(), format!("failed bursts: {probe_failures:#?}"));
    check(
        stats.unary_ok.load(Ordering::Relaxed) >= 200 && stats.streams_ok.load(Ordering::Relaxed) >= 6,
        "too little load to mean anything".into(),
    );

    // Each rotation was one clean reload.
    let (up, listener) = (upstream_status(&gw), listener_status(&gw));
    check(
        (up.generation, up.reload_errors) == (upstream_generation, 0),
        format!(
            "upstream: generation {} (expected {upstream_generation}), {} reload errors (last: {:?})",
            up.generation, up.reload_errors, up.last_error
        ),
    );
    check(
        (listener.generation, listener.reload_errors) == (ROTATIONS as u64 + 1, 0),
        format!(
            "listener: generation {} (expected {}), {} reload errors (last: {:?})",
            listener.generation,
            ROTATIONS + 1,
            listener.reload_errors,
            listener.last_error
        ),
    );

    // New handshakes, both sides, used the newest certificate at once.
    let grace = Duration::from_millis(100);
    let upstream_handshakes: Vec<(Instant, u64)> = records.iter().map(|r| (r.opened, r.serial.unwrap_or(0))).collect();
    let stale = clients.stale_handshakes(&upstream_handshakes, grace);
    check(
        stale.is_empty(),
        format!("upstream handshakes with an old client certificate: {stale:#?}"),
    );
    let stale = servers.stale_handshakes(&target.handshakes(), grace);
    check(
        stale.is_empty(),
        format!("client handshakes shown an old listener certificate: {stale:#?}"),
    );
    for (k, started, ended) in &probes {
        let opened: Vec<Option<u64>> = records
            .iter()
            .filter(|r| r.opened >= *started && r.opened <= *ended)
            .map(|r| r.serial)
            .collect();
        check(
            !opened.is_empty() && opened.iter().all(|s| *s == Some(clients.serials[*k])),
            format!(
                "the burst after rotation #{k} should open connections with client certificate {}: {opened:?}",
                clients.serials[*k]
            ),
        );
    }
    let seen: BTreeSet<u64> = target.handshakes().iter().map(|(_, s)| *s).collect();
    for (k, serial) in servers.serials.iter().enumerate() {
        check(
            seen.contains(serial),
            format!("no client was shown listener certificate #{k}"),
        );
    }

    // Connections on replaced client certificates drained in time.
    check(violations.is_empty(), format!("{violations:#?}"));
    let newest = *clients.serials.last().unwrap();
    check(
        open.keys().all(|serial| *serial == newest),
        format!("connections on older client certificates still open: {open:?} (newest {newest})"),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// 3. A bad pair written mid-run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pair_mid_run_keeps_the_old_one_fails_no_call_and_is_reported() {
    let ca = Ca::new("test CA");
    let dir = CertDir::new();
    let backend_leaf = ca.server_for(&[BACKEND_NAME]);
    let backend = TlsBackend::start("b1", server_config_for_cas(&backend_leaf, &[&ca], &[b"h2"])).await;
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    let client_leaf = ca.client("gateway");
    dir.write_pair("client", &client_leaf);
    let server_leaf = ca.server();
    dir.write_pair("server", &server_leaf);
    // Connections are replaced every 20 calls, so upstream handshakes keep happening.
    let upstream =
        upstream_tls(Some(&ca_file), Some("client"), &dir, BACKEND_NAME) + "pool:\n  max_requests_per_connection: 20\n";
    let yaml = listener_tls(&dir, None) + &config_yaml(&[backend.addr], &upstream, "");
    let gw = start_gateway(&yaml, reload_options(DRAIN)).await;
    let target = Target::tls(gw.addr, &[&ca], None);
    let load = Load::start(&target, 3, 1);
    eventually("calls flow", Duration::from_secs(10), || {
        load.stats.unary_ok.load(Ordering::Relaxed) >= 50
    })
    .await;

    // A key that belongs to another certificate, on both sides.
    let bad_written = Instant::now();
    dir.write("client.key", &ca.client("gateway").key_pem);
    dir.write("server.key", &ca.server().key_pem);
    eventually("both mismatched keys are rejected", Duration::from_secs(5), || {
        upstream_status(&gw).reload_errors == 1 && listener_status(&gw).reload_errors == 1
    })
    .await;
    for status in [upstream_status(&gw), listener_status(&gw)] {
        let error = status.last_error.clone().unwrap_or_default();
        assert!(error.contains("does not match the certificate"), "{status:?}");
        assert!(error.contains(".key"), "the error names the key file: {error}");
        assert_eq!(status.generation, 1);
    }

    // A certificate cut off mid-write, on both sides.
    let truncated = |pem: &str| pem[..pem.len() / 2].to_string();
    dir.write("client.pem", &truncated(&client_leaf.cert_pem));
    dir.write("server.pem", &truncated(&server_leaf.cert_pem));
    eventually(
        "both truncated certificates are rejected",
        Duration::from_secs(5),
        || upstream_status(&gw).reload_errors == 2 && listener_status(&gw).reload_errors == 2,
    )
    .await;
    // Let the load run on the bad files for a while (and across a few polls).
    let calls_before = load.stats.unary_ok.load(Ordering::Relaxed);
    tokio::time::sleep(POLL * 2).await;
    assert!(
        load.stats.unary_ok.load(Ordering::Relaxed) > calls_before + 50,
        "calls kept flowing"
    );

    // Still one error per bad set, not one per poll.
    let certs = admin_json(gw.admin, "/certs").await;
    let sides = [
        ("listener", certs["listener"].clone(), server_leaf.serial),
        ("upstream echo", certs["upstreams"][0][1].clone(), client_leaf.serial),
    ];
    assert_eq!(certs["upstreams"][0][0], "echo", "{certs:#}");
    for (side, status, serial) in &sides {
        assert_eq!(status["reload_errors"], 2, "{side}: {status:#}");
        assert_eq!(status["reloads"], 0, "{side}: {status:#}");
        assert_eq!(status["generation"], 1, "{side}: {status:#}");
        let last_error = status["last_error"].as_str().unwrap_or_default();
        assert!(
            last_error.contains("malformed PEM") && last_error.contains(".pem"),
            "{side}: last_error {last_error:?}"
        );
        assert_eq!(
            status["certificates"][0]["serial"],
            serial_hex(*serial),
            "{side}: the old pair is listed"
        );
    }
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    for side in ["listener", "upstream:echo"] {
        let errors = metric(
            &metrics,
            "grpc_edge_certificate_reloads_total",
            &[("side", side), ("result", "error")],
        );
        assert_eq!(errors, Some(2.0), "{side}: error reloads in\n{metrics}");
        let successes = metric(
            &metrics,
            "grpc_edge_certificate_reloads_total",
            &[("side", side), ("result", "success")],
        );
        assert_eq!(successes, Some(0.0), "{side}");
    }

    // The old pairs stayed in use for new handshakes, on both sides.
    let records = backend.records();
    let after: Vec<&ConnRecord> = records.iter().filter(|r| r.opened > bad_written).collect();
    assert!(
        after.len() >= 3,
        "upstream connections kept being replaced: {}",
        after.len()
    );
    assert!(
        after.iter().all(|r| r.serial == Some(client_leaf.serial)),
        "upstream handshakes after the bad files used another certificate: {after:?}"
    );
    let shown: Vec<u64> = target
        .handshakes()
        .iter()
        .filter(|(at, _)| *at > bad_written)
        .map(|(_, serial)| *serial)
        .collect();
    assert!(!shown.is_empty());
    assert!(
        shown.iter().all(|s| *s == server_leaf.serial),
        "listener handshakes: {shown:?}"
    );

    // A good pair afterwards is picked up; the errors stay counted.
    let fixed_client = ca.client("gateway");
    let fixed_server = ca.server();
    dir.write_pair("client", &fixed_client);
    dir.write_pair("server", &fixed_server);
    eventually("the fixed pairs are loaded", Duration::from_secs(5), || {
        upstream_status(&gw).generation == 2 && listener_status(&gw).generation == 2
    })
    .await;
    eventually(
        "the backend sees the fixed client certificate",
        Duration::from_secs(5),
        || backend.records().iter().any(|r| r.serial == Some(fixed_client.serial)),
    )
    .await;
    let stats = load.stop().await;
    let failures = stats.failures.lock().unwrap().clone();
    println!("bad pairs mid-run: {} calls, {} failed", stats.calls(), failures.len());
    assert!(failures.is_empty(), "{failures:#?}");
    for status in [upstream_status(&gw), listener_status(&gw)] {
        assert_eq!((status.reloads, status.reload_errors), (1, 2), "{status:?}");
    }
}

// ---------------------------------------------------------------------------
// 4. A client certificate about to expire

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_on_a_client_certificate_about_to_expire_drain_at_once_when_it_is_replaced() {
    let ca = Ca::new("test CA");
    let dir = CertDir::new();
    let backend_leaf = ca.server_for(&[BACKEND_NAME]);
    let backend = TlsBackend::start("b1", server_config_for_cas(&backend_leaf, &[&ca], &[b"h2"])).await;
    let ca_file = dir.write("ca.pem", &ca.cert_pem);
    // Inside the 5-minute window in which the old connections must go at once.
    let expiring = ca.expiring_in(Duration::from_secs(4 * 60), true);
    dir.write_pair("client", &expiring);
    let upstream = upstream_tls(Some(&ca_file), Some("client"), &dir, BACKEND_NAME)
        + "pool:\n  max_streams_per_connection: 1\n  max_connections_per_endpoint: 8\n";
    // A long drain window: connections retired "at a random moment within" it
    // would almost surely outlive this test's patience.
    let drain = Duration::from_secs(600);
    let gw = start_gateway(&config_yaml(&[backend.addr], &upstream, ""), reload_options(drain)).await;
    let load = Load::start(&Target::Plain(gw.addr), 3, 0);
    eventually(
        "connections on the expiring certificate",
        Duration::from_secs(10),
        || backend.open_by_serial().get(&expiring.serial).copied().unwrap_or(0) >= 2,
    )
    .await;

    let fresh = ca.client("gateway");
    let written = Instant::now();
    dir.write_pair("client", &fresh);
    eventually("the fresh certificate is loaded", Duration::from_secs(5), || {
        upstream_status(&gw).generation == 2
    })
    .await;
    // At once: the next tick of each connection (after its current call).
    let limit = SETTLE + TICK + SLACK + Duration::from_secs(1);
    let mut drained = true;
    let waited = tokio::time::timeout(limit, async {
        while backend.open_by_serial().contains_key(&expiring.serial) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if waited.is_err() {
        drained = false;
    }
    let open = backend.open_by_serial();
    let took = written.elapsed();
    let stats = load.stop().await;
    let failures = stats.failures.lock().unwrap().clone();
    println!(
        "expiring certificate: {} calls, {} failed; open by serial {took:?} after the replacement: {open:?}",
        stats.calls(),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        drained,
        "{} connection(s) on the client certificate expiring in 4 minutes (serial {}) still open {took:?} after it \
         was replaced (open by serial: {open:?}); they should be retired at the next tick, not at a random moment \
         within upstream_drain ({drain:?})",
        open.get(&expiring.serial).copied().unwrap_or(0),
        expiring.serial
    );
    assert!(
        backend.records().iter().any(|r| r.serial == Some(fresh.serial)),
        "new handshakes use the fresh certificate"
    );
}

// ---------------------------------------------------------------------------
// 5. /certs and the expiry metric list every certificate

#[tokio::test]
async fn certs_and_metrics_list_every_certificate() {
    use time::OffsetDateTime;
    let now = OffsetDateTime::now_utc();
    let until = |days: i64| now + time::Duration::days(days);
    let (upstream_a, upstream_b, clients_ca) =
        (Ca::new("upstream CA A"), Ca::new("upstream CA B"), Ca::new("client CA"));
    let dir = CertDir::new();

    let backend_leaf = upstream_a.server_for(&[BACKEND_NAME]);
    let backend = TlsBackend::start("b1", server_config_for_cas(&backend_leaf, &[&upstream_a], &[b"h2"])).await;
    let listener_leaf = clients_ca.leaf(LeafSpec {
        common_name: "gateway.example",
        not_after: until(20),
        ..LeafSpec::default()
    });
    let client_leaf = upstream_a.leaf(LeafSpec {
        common_name: "gateway-client",
        names: &[],
        not_after: until(10),
        client: true,
        ..LeafSpec::default()
    });
    dir.write_pair("server", &listener_leaf);
    dir.write("clients.pem", &clients_ca.cert_pem);
    dir.write_pair("client", &client_leaf);
    let ca_file = dir.write("ca.pem", &ca_bundle(&[&upstream_a, &upstream_b]));
    let yaml = listener_tls(&dir, Some("clients.pem"))
        + &config_yaml(
            &[backend.addr],
            &upstream_tls(Some(&ca_file), Some("client"), &dir, BACKEND_NAME),
            "",
        );
    let gw = start_gateway(&yaml, reload_options(DRAIN)).await;

    // It works end to end: a client with a certificate, through to the backend.
    let caller = clients_ca.client("caller");
    let mut client = Target::tls(gw.addr, &[&clients_ca], Some(&caller))
        .client()
        .await
        .unwrap();
    assert_eq!(client.unary(echo("hi")).await.unwrap().get_ref().message, "hi");

    let ca_serial = |ca: &Ca| {
        let (_, cert) = x509_parser::parse_x509_certificate(&ca.der).unwrap();
        (cert.raw_serial_as_string(), cert.validity().not_after.timestamp())
    };
    let path = |name: &str| dir.path(name).display().to_string();
    // side, role, file, index, subject CN, serial, not_after
    let (a_serial, a_not_after) = ca_serial(&upstream_a);
    let (b_serial, b_not_after) = ca_serial(&upstream_b);
    let (c_serial, c_not_after) = ca_serial(&clients_ca);
    let expected = [
        (
            "listener",
            "listener_cert",
            path("server.pem"),
            1,
            "gateway.example",
            serial_hex(listener_leaf.serial),
            until(20).unix_timestamp(),
        ),
        (
            "listener",
            "listener_client_ca",
            path("clients.pem"),
            1,
            "client CA",
            c_serial,
            c_not_after,
        ),
        (
            "upstream:echo",
            "upstream_client_cert",
            path("client.pem"),
            1,
            "gateway-client",
            serial_hex(client_leaf.serial),
            until(10).unix_timestamp(),
        ),
        (
            "upstream:echo",
            "upstream_ca",
            path("ca.pem"),
            1,
            "upstream CA A",
            a_serial,
            a_not_after,
        ),
        (
            "upstream:echo",
            "upstream_ca",
            path("ca.pem"),
            2,
            "upstream CA B",
            b_serial,
            b_not_after,
        ),
    ];

    let certs = admin_json(gw.admin, "/certs").await;
    assert_eq!(certs["upstreams"][0][0], "echo", "{certs:#}");
    let listed = |side: &str| -> Vec<serde_json::Value> {
        let status = if side == "listener" {
            &certs["listener"]
        } else {
            &certs["upstreams"][0][1]
        };
        status["certificates"].as_array().cloned().unwrap_or_default()
    };
    for side in ["listener", "upstream:echo"] {
        let count = expected.iter().filter(|e| e.0 == side).count();
        assert_eq!(listed(side).len(), count, "{side}: {certs:#}");
    }
    let (_, metrics) = admin_get(gw.admin, "/metrics").await;
    let expiry_series = metrics
        .lines()
        .filter(|l| l.starts_with("grpc_edge_certificate_expiry_timestamp_seconds{"))
        .count();
    assert_eq!(
        expiry_series,
        expected.len(),
        "one expiry series per certificate:\n{metrics}"
    );
    for (side, role, file, index, cn, serial, not_after) in &expected {
        let entry = listed(side)
            .into_iter()
            .find(|c| c["role"] == *role && c["index"] == *index)
            .unwrap_or_else(|| panic!("{side}: no {role} #{index} in {certs:#}"));
        assert_eq!(entry["file"], *file, "{entry:#}");
        assert!(
            entry["subject"].as_str().unwrap().contains(&format!("CN={cn}")),
            "{entry:#}"
        );
        assert_eq!(entry["serial"], *serial, "{entry:#}");
        assert_eq!(entry["not_after"], *not_after, "{entry:#}");
        assert!(
            entry["not_after_rfc3339"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{entry:#}"
        );

        let value = metric(
            &metrics,
            "grpc_edge_certificate_expiry_timestamp_seconds",
            &[("side", side), ("file", file), ("serial", serial)],
        );
        assert_eq!(value, Some(*not_after as f64), "{side} {role} #{index}:\n{metrics}");
    }
}

// ---------------------------------------------------------------------------
// 6. A pair written file by file is one change, also when only a poll sees it

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_written_in_two_steps_is_one_reload_even_when_only_polls_see_it() {
    let ca = Ca::new("test CA");
    let backend_leaf = ca.server_for(&[BACKEND_NAME]);
    let backend = TlsBackend::start("b1", server_config_for_cas(&backend_leaf, &[&ca], &[b"h2"])).await;
    // The configured files are symlinks into a directory the gateway does
    // not watch (a sidecar updating /run/secrets, a network volume without
    // inotify): only the poll sees changes.
    let (config_dir, secrets) = (CertDir::new(), CertDir::new());
    let ca_file = config_dir.write("ca.pem", &ca.cert_pem);
    secrets.write_pair("client", &ca.client("gateway"));
    for name in ["client.pem", "client.key"] {
        std::os::unix::fs::symlink(secrets.path(name), config_dir.path(name)).unwrap();
    }
    let upstream = upstream_tls(Some(&ca_file), Some("client"), &config_dir, BACKEND_NAME);
    // The writer puts the certificate, then 100 ms later the key, in place:
    // well inside `settle`.
    let reload = ReloadOptions {
        poll_interval: Duration::from_millis(20),
        settle: Duration::from_millis(300),
        ..reload_options(DRAIN)
    };
    let gw = start_gateway(&config_yaml(&[backend.addr], &upstream, ""), reload).await;
    let load = Load::start(&Target::Plain(gw.addr), 2, 0);
    for generation in 2..=3 {
        let next = ca.client("gateway");
        secrets.write("client.pem", &next.cert_pem);
        tokio::time::sleep(Duration::from_millis(100)).await;
        secrets.write("client.key", &next.key_pem);
        eventually("the new pair is loaded", Duration::from_secs(5), || {
            upstream_status(&gw).generation == generation
        })
        .await;
    }
    let stats = load.stop().await;
    let failures = stats.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:#?}");
    let status = upstream_status(&gw);
    assert_eq!(
        (status.reloads, status.reload_errors),
        (2, 0),
        "two pairs, each written cert-then-key within `settle`, should be two reloads and no error; a poll read the \
         new certificate with the old key and counted an error (and logged a warning) for a rotation that went \
         fine: {:?}",
        status.last_error
    );
}
