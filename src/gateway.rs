//! The gateway: configuration, descriptors, upstream clusters and routes
//! assembled once, and the entry point every front end calls with a request.
//!
//! `Gateway::handle` classifies a request by content type — native gRPC,
//! gRPC-Web, or REST — and hands it to that front end. It opens no sockets;
//! `server` does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use http::{HeaderValue, Request, Response};

use crate::body::Body;
use crate::config::{Config, ConfigErrors};
use crate::descriptors::{DescriptorError, Descriptors};
use crate::routing::RouteTable;
use crate::status::{Code, Status};
use crate::tls::PeerIdentity;
use crate::upstream::{Cluster, Resolve};

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// Descriptors could not be loaded.
    #[error("{0}")]
    Descriptors(#[from] DescriptorError),
    /// Something else, described.
    #[error("{0}")]
    Other(String),
}

/// Facts about the client connection a request arrived on.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The client's IP, ready for `x-forwarded-for`.
    pub(crate) forwarded_for: Option<HeaderValue>,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub(crate) scheme: &'static str,
    /// The client certificate's identity, when the listener verified one
    /// against `tls.client_ca`.
    pub client_identity: Option<Arc<PeerIdentity>>,
}

impl ConnInfo {
    /// Information about a plaintext connection from `remote`.
    pub fn new(remote: Option<SocketAddr>, tls: bool) -> Self {
        let forwarded_for = remote.and_then(|addr| HeaderValue::from_str(&addr.ip().to_string()).ok());
        Self {
            remote,
            forwarded_for,
            scheme: if tls { "https" } else { "http" },
            client_identity: None,
        }
    }

    /// The same, with the verified client identity of a TLS connection.
    pub fn with_client_identity(mut self, identity: Option<PeerIdentity>) -> Self {
        self.client_identity = identity.map(Arc::new);
        self
    }
}

/// The request's protocol, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Grpc,
    GrpcWeb,
    Rest,
}

impl Protocol {
    pub(crate) fn of<B>(request: &Request<B>) -> Self {
        let Some(content_type) = request.headers().get(http::header::CONTENT_TYPE) else {
            return Self::Rest;
        };
        let ct = content_type.as_bytes();
        if let Some(rest) = ct.strip_prefix(b"application/grpc") {
            if rest.starts_with(b"-web") {
                return Self::GrpcWeb;
            }
            if rest.is_empty() || rest[0] == b'+' || rest[0] == b';' {
                return Self::Grpc;
            }
        }
        Self::Rest
    }
}

pub(crate) struct GatewayInner {
    config: Config,
    descriptors: Descriptors,
    clusters: HashMap<String, Arc<Cluster>>,
    routes: RouteTable,
    rest: crate::rest::RestFrontEnd,
    cors: Option<crate::cors::Policy>,
    /// Set while a listener is serving and not shutting down (`/readyz`).
    ready: std::sync::atomic::AtomicBool,
    /// The built-in `grpc.health.v1` statuses.
    health: tonic_health::server::HealthReporter,
    pub(crate) telemetry: Arc<crate::telemetry::Telemetry>,
    /// Client connections open now.
    connections: std::sync::atomic::AtomicUsize,
    /// Client connections closed by the rapid-reset guard.
    premature_reset_closes: std::sync::atomic::AtomicU64,
    /// Client connections closed at once for the connection limit.
    connections_over_limit: std::sync::atomic::AtomicU64,
    /// Set by a shutdown handle: new calls are refused while calls in flight finish.
    draining: std::sync::atomic::AtomicBool,
    /// TLS towards each upstream that has it.
    client_tls: Vec<(String, crate::tls::ClientTls)>,
    /// The listener's TLS, once a listener serves with it.
    listener_tls: std::sync::OnceLock<crate::tls::ServerTls>,
}

/// Every certificate the gateway has loaded, as `GET /certs` shows them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CertsSnapshot {
    /// The listener's certificates (`tls`), when it serves TLS.
    pub listener: Option<crate::tls::TlsStatus>,
    /// Each upstream's TLS (`upstreams.*.tls`), by upstream name.
    pub upstreams: Vec<(String, crate::tls::TlsStatus)>,
}

impl GatewayInner {
    /// Certificates, generations and reload results.
    pub(crate) fn certs(&self) -> CertsSnapshot {
        CertsSnapshot {
            listener: self.listener_tls.get().map(crate::tls::ServerTls::status),
            upstreams: self
                .client_tls
                .iter()
                .map(|(name, tls)| (name.clone(), tls.status()))
                .collect(),
        }
    }

    /// Each upstream as the gateway sees it now, sorted by name.
    pub(crate) fn upstream_snapshot(&self) -> Vec<crate::upstream::ClusterSnapshot> {
        let mut all: Vec<_> = self.clusters.values().map(|cluster| cluster.snapshot()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn premature_reset_closes(&self) -> u64 {
        self.premature_reset_closes.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn connections_over_limit(&self) -> u64 {
        self.connections_over_limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Each service routed to a network upstream, and whether that upstream
    /// has an endpoint in service now.
    ///
    /// The empty name (the gateway itself) comes first, from the ready flag.
    pub(crate) fn service_availability(&self) -> Vec<(String, bool)> {
        let ready = self.ready.load(std::sync::atomic::Ordering::Acquire);
        let mut services: Vec<(String, bool)> = vec![(String::new(), ready)];
        for method in self.descriptors.registry().methods() {
            let service = method.service();
            if services.iter().any(|(s, _)| s == service) {
                continue;
            }
            if let Some(target) = self.routes.resolve(&method.path)
                && let crate::routing::Upstream::Cluster(cluster) = &target.upstream
            {
                services.push((service.to_string(), cluster.has_endpoint_in_service()));
            }
        }
        services
    }
}

/// A configured gateway; cheap to clone (all clones share one state).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

impl Gateway {
    /// Builds a gateway from a configuration file (relative paths resolve against its directory).
    pub fn from_config_file(path: impl AsRef<Path>) -> Result<Self, BuildError> {
        let config = Config::from_file(path)?;
        Self::from_config(config)
    }

    /// Builds a gateway from a configuration: loads and merges descriptors,
    /// creates the upstream clusters and resolves the routes.
    pub fn from_config(config: Config) -> Result<Self, BuildError> {
        config.validate()?;
        let descriptors = Descriptors::load(&config.descriptors)?;
        Self::with_descriptors(config, descriptors)
    }

    /// Builds a gateway from a configuration and descriptors loaded elsewhere
    /// (the configuration's own `descriptors` list is not read).
    pub fn with_descriptors(config: Config, descriptors: Descriptors) -> Result<Self, BuildError> {
        Self::builder().config(config).descriptors(descriptors).build()
    }

    /// A builder: descriptors, upstreams, routes and in-process services
    /// given in code, with or without a configuration file.
    pub fn builder() -> crate::builder::GatewayBuilder {
        crate::builder::GatewayBuilder::default()
    }

    pub(crate) fn assemble(
        config: Config,
        descriptors: Descriptors,
        resolver: Arc<dyn Resolve>,
        tls_reload: crate::tls::ReloadOptions,
        services: Vec<crate::local::LocalService>,
    ) -> Result<Self, BuildError> {
        config.validate()?;
        crate::tls::check_listener(&config)?;
        let mut clusters = HashMap::new();
        let mut client_tls = Vec::new();
        for (name, upstream) in &config.upstreams {
            let tls = match &upstream.tls {
                None => None,
                Some(tls) => {
                    let client = crate::tls::ClientTls::new(name, tls, tls_reload.clone()).map_err(|e| {
                        ConfigErrors::from(crate::config::ConfigError::new(
                            format!("upstreams.{name}.tls.{}", e.field),
                            e.to_string(),
                        ))
                    })?;
                    if tokio::runtime::Handle::try_current().is_ok() {
                        client.start_reloading();
                    }
                    Some(client)
                }
            };
            let cluster = Cluster::new(name, upstream, resolver.clone(), tls.clone()).map_err(BuildError::Other)?;
            if let Some(tls) = tls {
                client_tls.push((name.clone(), tls));
            }
            clusters.insert(name.clone(), cluster);
        }
        // Background work (outlier evaluation, health checks, DNS) needs a
        // runtime; a gateway built outside one (e.g. only to check a
        // configuration) simply does not start it.
        if tokio::runtime::Handle::try_current().is_ok() {
            for cluster in clusters.values() {
                cluster.start();
            }
        }
        let builtins = crate::builtin::builtins(descriptors.pool()).map_err(BuildError::Other)?;
        let routes = RouteTable::new(
            &config.routes,
            &clusters,
            &services,
            &builtins.services,
            descriptors.registry(),
        )
        .map_err(BuildError::Other)?;
        let router = crate::rest::router::RestRouter::new(descriptors.registry(), descriptors.pool())
            .map_err(BuildError::Other)?;
        let rest = crate::rest::RestFrontEnd::new(router, descriptors.pool().clone(), &config.transcoding);
        let cors = config.cors.as_ref().map(crate::cors::Policy::new).transpose()?;
        let telemetry = crate::telemetry::Telemetry::new(&config.observability, descriptors.registry());
        let collector = Arc::new(crate::telemetry::collector::GatewayCollector::default());
        telemetry.register_collector(Box::new(collector.clone()));
        let gateway = Self {
            inner: Arc::new(GatewayInner {
                config,
                descriptors,
                clusters,
                routes,
                rest,
                cors,
                ready: std::sync::atomic::AtomicBool::new(false),
                health: builtins.health.clone(),
                telemetry,
                connections: std::sync::atomic::AtomicUsize::new(0),
                premature_reset_closes: std::sync::atomic::AtomicU64::new(0),
                connections_over_limit: std::sync::atomic::AtomicU64::new(0),
                draining: std::sync::atomic::AtomicBool::new(false),
                client_tls,
                listener_tls: std::sync::OnceLock::new(),
            }),
        };
        let _ = collector.gateway.set(Arc::downgrade(&gateway.inner));
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(crate::builtin::track_services(
                Arc::downgrade(&gateway.inner),
                builtins.health,
            ));
        }
        Ok(gateway)
    }

    /// The configuration in effect.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The merged descriptor pool and method registry.
    pub fn descriptors(&self) -> &Descriptors {
        &self.inner.descriptors
    }

    pub(crate) fn routes(&self) -> &RouteTable {
        &self.inner.routes
    }

    /// Whether the gateway is serving and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, std::sync::atomic::Ordering::Release);
        let health = self.inner.health.clone();
        let status = if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        // The health reporter is async; outside a runtime (a host building its
        // router before starting one) the flag alone is set, and the health
        // service catches up within a second (`builtin::track_services`).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { health.set_service_status("", status).await });
        }
    }

    pub(crate) fn rest(&self) -> &crate::rest::RestFrontEnd {
        &self.inner.rest
    }

    /// Each upstream as the gateway sees it now, sorted by name.
    pub fn upstream_snapshot(&self) -> Vec<crate::upstream::ClusterSnapshot> {
        self.inner.upstream_snapshot()
    }

    /// Every certificate loaded, with reload counters.
    pub fn certs(&self) -> CertsSnapshot {
        self.inner.certs()
    }

    /// Whether the gateway drains: it refuses new calls.
    pub(crate) fn is_draining(&self) -> bool {
        self.inner.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Starts draining: new calls are refused with UNAVAILABLE (REST: 503),
    /// the gateway reports NOT_SERVING, calls in flight carry on.
    pub(crate) fn start_draining(&self) {
        self.inner.draining.store(true, std::sync::atomic::Ordering::Release);
        self.set_ready(false);
    }

    /// Calls started and not yet finished.
    pub fn calls_in_flight(&self) -> usize {
        self.inner
            .telemetry
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refuse_while_draining(&self, request: &Request<Body>) -> Response<Body> {
        let status = Status::new(Code::Unavailable, "the gateway is shutting down");
        match Protocol::of(request) {
            Protocol::Rest => self.inner.rest.error(&status),
            Protocol::Grpc => status.to_grpc_response(),
            Protocol::GrpcWeb => crate::grpc_web::error_response(&status, request),
        }
    }

    pub(crate) fn set_listener_tls(&self, tls: crate::tls::ServerTls) {
        let _ = self.inner.listener_tls.set(tls);
    }

    pub(crate) fn telemetry(&self) -> &Arc<crate::telemetry::Telemetry> {
        &self.inner.telemetry
    }

    /// Every metric, in Prometheus text format (or OpenMetrics).
    pub fn render_metrics(&self, openmetrics: bool) -> String {
        let format = if openmetrics {
            crate::telemetry::Format::OpenMetrics
        } else {
            crate::telemetry::Format::Text
        };
        self.inner.telemetry.render(format)
    }

    pub(crate) fn connection_opened(&self) {
        self.inner
            .connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn note_premature_reset_close(&self) {
        self.inner
            .premature_reset_closes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn note_connection_over_limit(&self) {
        self.inner
            .connections_over_limit
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn connection_closed(&self) {
        self.inner
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The gRPC method routes: `(path, upstream, call kind)`, sorted by path.
    pub fn method_routes(&self) -> Vec<(String, String, &'static str)> {
        self.inner
            .routes
            .known_paths()
            .into_iter()
            .map(|(path, target)| {
                let kind = target.kind.map_or("unknown", |k| k.as_str());
                (path.to_string(), target.upstream.name(), kind)
            })
            .collect()
    }

    /// Closes upstream connections once their calls finish.
    pub fn close_upstreams(&self) {
        for cluster in self.inner.clusters.values() {
            cluster.close();
        }
    }

    /// Handles one request from any front end.
    pub async fn handle(&self, request: Request<Body>, conn: &ConnInfo) -> Response<Body> {
        let cors = match self.inner.cors.as_ref().map(|cors| cors.check(&request)) {
            Some(crate::cors::Check::Preflight(answer)) => return *answer,
            Some(crate::cors::Check::Actual(decoration)) => Some(decoration),
            None => None,
        };
        if self.inner.draining.load(std::sync::atomic::Ordering::Acquire) {
            return self.refuse_while_draining(&request);
        }
        let mut response = match Protocol::of(&request) {
            Protocol::Grpc => crate::passthrough::forward(self, request, conn).await,
            // Boxed so that their larger futures do not grow every native gRPC
            // call's task, which is copied into place when it is spawned.
            Protocol::GrpcWeb => Box::pin(crate::grpc_web::handle(self, request, conn)).await,
            Protocol::Rest => Box::pin(crate::rest::handle(self, &self.inner.rest, request, conn)).await,
        };
        if let Some(decoration) = cors {
            decoration.apply(response.headers_mut());
        }
        response
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("descriptors", &self.inner.descriptors)
            .field("upstreams", &self.inner.clusters.len())
            .finish()
    }
}
