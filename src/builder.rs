//! Building a gateway in code: descriptors from bytes, a prost-reflect pool
//! or `.proto` files; network upstreams and routes; in-process tonic
//! services; and the shared options (JSON printing, CORS, limits) — with or
//! without a configuration file underneath. Every mistake is reported by
//! `build()`, naming what is wrong.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use prost_reflect::DescriptorPool;

use crate::body::{Body, BoxError};
use crate::config::{Config, ConfigErrors, Cors, Observability, Route, Transcoding, Upstream};
use crate::descriptors::{Descriptors, PoolBuilder};
use crate::gateway::{BuildError, Gateway};
use crate::local::LocalService;
use crate::tls::ReloadOptions;
use crate::upstream::{Resolve, SystemResolver};

/// A descriptor source added in code.
enum Source {
    Set(Bytes, String),
    Pool(DescriptorPool),
    Proto(PathBuf, Vec<PathBuf>),
}

/// Builds a [`Gateway`] step by step.
///
/// ```no_run
/// # async fn example() -> Result<(), grpc_edge::BuildError> {
/// use grpc_edge::config::{Route, Upstream};
/// let gateway = grpc_edge::Gateway::builder()
///     .descriptor_set(grpc_edge::demo::DESCRIPTOR_SET)
///     .upstream("orders", Upstream::with_endpoints(["127.0.0.1:50051"]))
///     .route(Route::new("demo.v1.OrderService", "orders"))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct GatewayBuilder {
    config: Option<Config>,
    descriptors: Option<Descriptors>,
    sources: Vec<Source>,
    services: Vec<LocalService>,
    upstreams: Vec<(String, Upstream)>,
    routes: Vec<Route>,
    transcoding: Option<Transcoding>,
    cors: Option<Cors>,
    observability: Option<Observability>,
    resolver: Option<Arc<dyn Resolve>>,
    tls_reload: Option<ReloadOptions>,
}

impl GatewayBuilder {
    /// Starts from a configuration (its descriptors, upstreams and routes
    /// are kept; what the builder adds comes on top).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Descriptors already loaded; replaces every other descriptor source.
    pub fn descriptors(mut self, descriptors: Descriptors) -> Self {
        self.descriptors = Some(descriptors);
        self
    }

    /// An encoded `FileDescriptorSet`, e.g. the `FILE_DESCRIPTOR_SET` a tonic
    /// build script produces (`file_descriptor_set_path` + `include_bytes!`).
    pub fn descriptor_set(mut self, bytes: impl Into<Bytes>) -> Self {
        let label = format!("descriptor set #{}", self.sources.len() + 1);
        self.sources.push(Source::Set(bytes.into(), label));
        self
    }

    /// Every file of a prost-reflect pool.
    pub fn descriptor_pool(mut self, pool: &DescriptorPool) -> Self {
        self.sources.push(Source::Pool(pool.clone()));
        self
    }

    /// A `.proto` file compiled at build time (no `protoc`), with its import paths.
    pub fn proto_file(mut self, proto: impl AsRef<Path>, include: &[impl AsRef<Path>]) -> Self {
        let include = include.iter().map(|p| p.as_ref().to_path_buf()).collect();
        self.sources.push(Source::Proto(proto.as_ref().to_path_buf(), include));
        self
    }

    /// Serves a tonic service in-process: REST, gRPC-Web and native gRPC
    /// calls to it become direct tower calls, with no socket in between.
    /// Its descriptors must be added too (for REST and gRPC-Web).
    ///
    /// It takes every call to its service name (`S::NAME`) before any route
    /// is consulted, unless a route names that service or one of its
    /// methods explicitly; then the route wins. Calls get the default
    /// deadlines (15 s for unary calls, 5 min idle for streams).
    pub fn service<S, B>(mut self, service: S) -> Self
    where
        S: tonic::server::NamedService
            + tower::Service<Request<Body>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.services.push(LocalService::new(S::NAME, service));
        self
    }

    /// A network upstream named `name`.
    pub fn upstream(mut self, name: impl Into<String>, upstream: Upstream) -> Self {
        self.upstreams.push((name.into(), upstream));
        self
    }

    /// A route (after those of the configuration; the first match wins).
    pub fn route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }

    /// REST/JSON options (JSON printing, unknown fields, body limits).
    pub fn transcoding(mut self, transcoding: Transcoding) -> Self {
        self.transcoding = Some(transcoding);
        self
    }

    /// CORS for browser callers.
    pub fn cors(mut self, cors: Cors) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Access logs and tracing.
    pub fn observability(mut self, observability: Observability) -> Self {
        self.observability = Some(observability);
        self
    }

    /// The resolver for `upstreams.*.dns` (default: the system resolver).
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// How upstream certificates are watched and rotated (default: inotify
    /// plus a 60 s poll; old connections drained within 5 minutes).
    pub fn tls_reload(mut self, options: ReloadOptions) -> Self {
        self.tls_reload = Some(options);
        self
    }

    /// Builds the gateway. Call it inside a tokio runtime so that background
    /// work (health checks, DNS, outlier detection, certificate watching) starts.
    ///
    /// # Errors
    ///
    /// Every mistake is an error naming what is wrong: an invalid setting
    /// (with its key path), an upstream defined twice, a route to an
    /// upstream that does not exist, nothing to serve (no route and no
    /// in-process service), descriptors that cannot be loaded or merged, an
    /// in-process service registered twice or without its descriptors.
    pub fn build(self) -> Result<Gateway, BuildError> {
        let mut config = self.config.unwrap_or_else(Config::empty);
        for (name, upstream) in self.upstreams {
            if config.upstreams.contains_key(&name) {
                return Err(BuildError::Other(format!("upstream \"{name}\" is defined twice")));
            }
            config.upstreams.insert(name, upstream);
        }
        config.routes.extend(self.routes);
        if let Some(transcoding) = self.transcoding {
            config.transcoding = transcoding;
        }
        if self.cors.is_some() {
            config.cors = self.cors;
        }
        if let Some(observability) = self.observability {
            config.observability = observability;
        }
        config.validate()?;
        if config.routes.is_empty() && self.services.is_empty() {
            return Err(BuildError::Config(ConfigErrors::from(crate::config::ConfigError::new(
                "routes",
                "nothing to serve: add a route to an upstream, or an in-process service",
            ))));
        }

        let descriptors = match self.descriptors {
            Some(descriptors) => descriptors,
            None => {
                let mut pool = PoolBuilder::new();
                pool.add_sources(&config.descriptors)?;
                for source in &self.sources {
                    match source {
                        Source::Set(bytes, label) => pool.add_file_descriptor_set(bytes.clone(), label)?,
                        Source::Pool(descriptor_pool) => pool.add_pool(descriptor_pool, "a descriptor pool")?,
                        Source::Proto(path, include) => {
                            pool.add_proto_file(path, include, &path.display().to_string())?;
                        }
                    }
                }
                pool.build()?
            }
        };

        let mut seen: Vec<&str> = Vec::new();
        for service in &self.services {
            if seen.contains(&service.name()) {
                return Err(BuildError::Other(format!(
                    "in-process service {} is registered twice",
                    service.name()
                )));
            }
            seen.push(service.name());
            if !descriptors.registry().has_service(service.name()) {
                return Err(BuildError::Other(format!(
                    "in-process service {} has no descriptor: add the file descriptor set that defines it \
                     with .descriptor_set(...) (REST and gRPC-Web need its types)",
                    service.name()
                )));
            }
        }
        let resolver = self.resolver.unwrap_or_else(|| Arc::new(SystemResolver));
        Gateway::assemble(
            config,
            descriptors,
            resolver,
            self.tls_reload.unwrap_or_default(),
            self.services,
        )
    }
}
