//! The configuration schema, field for field as `DESIGN.md` documents it, with
//! every default in one place. Unknown keys are rejected everywhere
//! (`deny_unknown_fields`); cross-field rules live in `validate.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::units::{ByteSize, Duration};

impl Config {
    /// A configuration with nothing in it yet (listening on `127.0.0.1:0`),
    /// for gateways assembled in code with [`crate::Gateway::builder`].
    pub fn empty() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            tls: None,
            admin: None,
            descriptors: Vec::new(),
            transcoding: Transcoding::default(),
            cors: None,
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            observability: Observability::default(),
        }
    }
}

/// The whole gateway configuration (`config/gateway.yaml`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the one port that serves REST, gRPC-Web and native gRPC.
    pub listen: SocketAddr,
    /// TLS termination for the listener; absent means plaintext (HTTP/1.1 + h2c).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// The admin listener (metrics, introspection); absent means disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<Admin>,
    /// Descriptor sources merged into one pool.
    pub descriptors: Vec<DescriptorSource>,
    /// REST/JSON transcoding options.
    #[serde(default)]
    pub transcoding: Transcoding,
    /// CORS for browser callers; absent means no CORS headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<Cors>,
    /// Named upstream clusters.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Routes from gRPC services to upstreams; the first match wins.
    pub routes: Vec<Route>,
    /// Metrics, access logs and tracing (all on by default, except span export).
    #[serde(default)]
    pub observability: Observability,
}

/// Per-call metrics, access logs and distributed tracing.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Observability {
    /// Count calls per method in `/metrics` (upstream, certificate and
    /// process metrics are read at scrape time and cost nothing per call).
    pub metrics: bool,
    /// One structured line per call.
    pub access_log: AccessLog,
    /// W3C trace context and OTLP export.
    pub tracing: Tracing,
}

impl Default for Observability {
    fn default() -> Self {
        Self {
            metrics: true,
            access_log: AccessLog::default(),
            tracing: Tracing::default(),
        }
    }
}

/// Access log settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLog {
    /// Log calls at all (target `grpc_edge::access`, level INFO).
    pub enabled: bool,
    /// Share of successful calls logged, 0.0–1.0; failed calls are always logged.
    pub sample_successes: f64,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_successes: 1.0,
        }
    }
}

/// Tracing settings. Trace context is always propagated; spans are exported
/// only when `otlp_endpoint` is set.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tracing {
    /// OTLP/HTTP collector base URL, e.g. `http://otel-collector:4318`; empty: no export.
    pub otlp_endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// Share of new traces (started here) that are sampled, 0.0–1.0; a client's sampling decision is kept.
    pub sample_ratio: f64,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: String::new(),
            service_name: "grpc-edge".into(),
            sample_ratio: 1.0,
        }
    }
}

/// Listener TLS settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// The admin listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address for metrics and introspection, e.g. `127.0.0.1:9901`.
    pub listen: SocketAddr,
}

/// One entry of `descriptors`: a FileDescriptorSet file, or a `.proto` compiled at start-up.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum DescriptorSource {
    /// A binary `FileDescriptorSet` (`protoc --include_imports --descriptor_set_out`).
    Set(PathBuf),
    /// A `.proto` file compiled with the given include directories.
    Proto {
        /// The `.proto` file.
        proto: PathBuf,
        /// Import search paths.
        include: Vec<PathBuf>,
    },
}

impl<'de> Deserialize<'de> for DescriptorSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ProtoEntry {
            proto: PathBuf,
            #[serde(default)]
            include: Vec<PathBuf>,
        }
        struct SourceVisitor;
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = DescriptorSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a descriptor-set file path, or {proto: FILE, include: [DIRS]}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DescriptorSource::Set(PathBuf::from(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let entry = ProtoEntry::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(DescriptorSource::Proto {
                    proto: entry.proto,
                    include: entry.include,
                })
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}

/// REST/JSON transcoding options.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transcoding {
    /// JSON printing options.
    pub json: JsonOptions,
    /// Reject a JSON body field the message does not define (400), or ignore it.
    pub reject_unknown_fields: bool,
    /// What to do with a query parameter that names no field.
    pub unknown_query_parameters: UnknownQueryParameters,
    /// Largest accepted request body.
    pub max_request_body: ByteSize,
    /// Largest response message, per message, on every protocol.
    pub max_response_message: ByteSize,
    /// Default REST format for server streams.
    pub server_streaming: StreamFormat,
}

impl Default for Transcoding {
    fn default() -> Self {
        Self {
            json: JsonOptions::default(),
            reject_unknown_fields: true,
            unknown_query_parameters: UnknownQueryParameters::Reject,
            max_request_body: ByteSize::mib(4),
            max_response_message: ByteSize::mib(4),
            server_streaming: StreamFormat::Ndjson,
        }
    }
}

/// JSON printing options (proto3 JSON mapping).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonOptions {
    /// Print field names as in the .proto (snake_case) instead of lowerCamelCase.
    pub use_proto_names: bool,
    /// Print fields that hold their default value.
    pub emit_unpopulated: bool,
    /// Print enums as numbers.
    pub enums_as_ints: bool,
}

/// What to do with unknown query parameters.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownQueryParameters {
    /// 400 INVALID_ARGUMENT naming the parameter.
    Reject,
    /// Skip it.
    Ignore,
}

/// REST server-streaming wire format.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StreamFormat {
    /// Newline-delimited JSON, `{"result":…}` per line.
    Ndjson,
    /// Server-sent events.
    Sse,
}

/// CORS policy for browser callers.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// Exact origins, or `["*"]`.
    pub allow_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`.
    #[serde(default)]
    pub allow_credentials: bool,
    /// Request headers allowed in addition to the built-in gRPC-Web set.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers exposed in addition to the gRPC status headers.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight answer.
    #[serde(default = "Cors::default_max_age")]
    pub max_age: Duration,
}

impl Cors {
    /// A policy for these origins (`["*"]` for any), with the defaults for
    /// everything else: no credentials, no extra headers, `max_age` 10 minutes.
    pub fn allow_origins<S: Into<String>>(origins: impl IntoIterator<Item = S>) -> Self {
        Self {
            allow_origins: origins.into_iter().map(Into::into).collect(),
            allow_credentials: false,
            allow_headers: Vec::new(),
            expose_headers: Vec::new(),
            max_age: Self::default_max_age(),
        }
    }

    fn default_max_age() -> Duration {
        Duration::from_secs(600)
    }
}

/// One upstream cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Static endpoints, `host:port`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// A DNS name and port whose every A/AAAA record is an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<String>,
    /// How often `dns` is resolved again.
    #[serde(default = "Upstream::default_dns_refresh")]
    pub dns_refresh: Duration,
    /// How each call picks its endpoint.
    #[serde(default)]
    pub balancer: BalancerKind,
    /// Limit on establishing one connection (TCP and, with TLS, the handshake).
    #[serde(default = "Upstream::default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Connection pool per endpoint.
    #[serde(default)]
    pub pool: PoolConfig,
    /// HTTP/2 settings towards the endpoints.
    #[serde(default)]
    pub http2: Http2Config,
    /// Concurrency limits for the whole cluster.
    #[serde(default)]
    pub limits: Limits,
    /// Passive health: eject endpoints that fail.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
    /// Active `grpc.health.v1` checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// TLS / mTLS towards the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

impl Default for Upstream {
    /// No endpoints yet, every other setting at its documented default.
    fn default() -> Self {
        Self {
            endpoints: Vec::new(),
            dns: None,
            dns_refresh: Self::default_dns_refresh(),
            balancer: BalancerKind::default(),
            connect_timeout: Self::default_connect_timeout(),
            pool: PoolConfig::default(),
            http2: Http2Config::default(),
            limits: Limits::default(),
            outlier_detection: OutlierDetection::default(),
            health_check: None,
            retry: RetryPolicy::default(),
            tls: None,
        }
    }
}

impl Upstream {
    /// An upstream with these static `host:port` endpoints and default settings.
    pub fn with_endpoints<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    fn default_dns_refresh() -> Duration {
        Duration::from_secs(5)
    }
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
}

/// Endpoint selection algorithm.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BalancerKind {
    /// Power of two choices over `ewma_rtt × (in_flight + 1)`.
    #[default]
    PeakEwma,
    /// Power of two choices over in-flight calls.
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
}

/// Connection pool settings, per endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Most connections to one endpoint.
    #[serde(deserialize_with = "positive_u32")]
    pub max_connections_per_endpoint: u32,
    /// Our own cap on concurrent streams per connection.
    #[serde(deserialize_with = "positive_u32")]
    pub max_streams_per_connection: u32,
    /// Retire a connection after this many calls; 0 means never.
    pub max_requests_per_connection: u64,
    /// Retire a connection after this age (±10% jitter).
    pub max_connection_age: Duration,
    /// Close a connection that carried no call for this long.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections_per_endpoint: 4,
            max_streams_per_connection: 100,
            max_requests_per_connection: 0,
            max_connection_age: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

/// HTTP/2 settings for upstream connections.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http2Config {
    /// Stream-level flow-control window.
    pub initial_stream_window: ByteSize,
    /// Connection-level flow-control window.
    pub initial_connection_window: ByteSize,
    /// PING interval while calls are active.
    pub keepalive_interval: Duration,
    /// Close the connection if a PING gets no answer in this time.
    pub keepalive_timeout: Duration,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            initial_stream_window: ByteSize::mib(1),
            initial_connection_window: ByteSize::mib(2),
            keepalive_interval: Duration::from_secs(300),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Cluster-wide concurrency limits.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Unary calls in flight.
    pub max_requests: u32,
    /// Streaming calls in flight.
    pub max_streams: u32,
    /// Calls waiting for a connection or a stream slot.
    pub max_pending: u32,
    /// How long a call may wait for a connection or stream slot.
    pub pending_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_requests: 10_000,
            max_streams: 10_000,
            max_pending: 1024,
            pending_timeout: Duration::from_secs(3),
        }
    }
}

/// Outlier detection (passive health).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierDetection {
    /// Eject after this many failures in a row; 0 disables the rule.
    pub consecutive_failures: u32,
    /// Eject above this failure rate (percent) in one interval; 0 disables the rule.
    pub failure_percentage: u32,
    /// Calls an endpoint must see in the interval before its failure rate counts.
    pub failure_percentage_min_requests: u32,
    /// Evaluation interval.
    pub interval: Duration,
    /// First ejection time; multiplied by the times ejected.
    pub base_ejection_time: Duration,
    /// Cap on the ejection time.
    pub max_ejection_time: Duration,
    /// Most endpoints (percent) ejected at once; one may always be ejected.
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_percentage: 50,
            failure_percentage_min_requests: 20,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Active `grpc.health.v1` health checks.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheck {
    /// Time between checks of one endpoint.
    pub interval: Duration,
    /// Limit on one check.
    pub timeout: Duration,
    /// Failed checks in a row before an endpoint is unhealthy.
    #[serde(deserialize_with = "positive_u32")]
    pub unhealthy_threshold: u32,
    /// Passed checks in a row before it is healthy again.
    #[serde(deserialize_with = "positive_u32")]
    pub healthy_threshold: u32,
    /// The `service` field of the health request.
    pub service: String,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
            service: String::new(),
        }
    }
}

/// Retry policy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// gRPC codes that are retried (calls that never reached a backend always are).
    pub on: Vec<RetryableCode>,
    /// Attempts including the first.
    #[serde(deserialize_with = "positive_u32")]
    pub max_attempts: u32,
    /// Retries never exceed this share of active calls.
    pub budget_percent: u32,
    /// Backoff between attempts.
    pub backoff: Backoff,
    /// A request larger than this is not retried once it was sent.
    pub max_replay_buffer: ByteSize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            on: Vec::new(),
            max_attempts: 3,
            budget_percent: 20,
            backoff: Backoff::default(),
            max_replay_buffer: ByteSize::kib(64),
        }
    }
}

/// Full-jitter exponential backoff.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// First backoff.
    pub base: Duration,
    /// Cap.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(25),
            max: Duration::from_millis(250),
        }
    }
}

/// gRPC codes that may be named in `retry.on`, in snake_case.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum RetryableCode {
    Cancelled,
    Unknown,
    DeadlineExceeded,
    ResourceExhausted,
    Aborted,
    Internal,
    Unavailable,
    DataLoss,
}

/// TLS towards upstream endpoints.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Trust roots (PEM); system roots when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), for mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// SNI and the name the server certificate is verified against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// One route: which calls go to which upstream.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// `pkg.Service`, `pkg.Service/Method`, or `*`.
    #[serde(rename = "match")]
    pub matches: String,
    /// Name of an entry in `upstreams`.
    pub upstream: String,
    /// Overall limit for unary calls; a client's `grpc-timeout` may shorten it.
    #[serde(default = "Route::default_timeout")]
    pub timeout: Duration,
    /// Streams end when no message moves for this long.
    #[serde(default = "Route::default_stream_idle_timeout")]
    pub stream_idle_timeout: Duration,
}

impl Route {
    /// A route sending calls that `matches` (`pkg.Service`, `pkg.Service/Method` or `*`)
    /// to `upstream`, with the default timeouts.
    pub fn new(matches: impl Into<String>, upstream: impl Into<String>) -> Self {
        Self {
            matches: matches.into(),
            upstream: upstream.into(),
            timeout: Self::default_timeout(),
            stream_idle_timeout: Self::default_stream_idle_timeout(),
        }
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(15)
    }
    fn default_stream_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
}

/// Deserializes an integer that must be at least 1.
fn positive_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct PositiveVisitor;
    impl Visitor<'_> for PositiveVisitor {
        type Value = u32;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a positive integer")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
            match u32::try_from(v) {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
            match u64::try_from(v) {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
    }
    deserializer.deserialize_any(PositiveVisitor)
}

/// A parsed `routes[].match`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// `*`: every call.
    Any,
    /// `pkg.Service`: every method of one service.
    Service(String),
    /// `pkg.Service/Method`: one method.
    Method {
        /// Fully-qualified service name.
        service: String,
        /// Method name.
        method: String,
    },
}

impl RouteMatch {
    /// Parses `*`, `pkg.Service` or `pkg.Service/Method`, explaining what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let expected = || {
            format!(
                "expected \"*\", a service such as library.v1.LibraryService, or a method such as library.v1.LibraryService/GetBook, got \"{text}\""
            )
        };
        let text = text.strip_prefix('/').unwrap_or(text);
        match text.split_once('/') {
            None if is_qualified_name(text) => Ok(Self::Service(text.to_string())),
            Some((service, method)) if is_qualified_name(service) && is_identifier(method) => Ok(Self::Method {
                service: service.to_string(),
                method: method.to_string(),
            }),
            _ => Err(expected()),
        }
    }

    /// Whether this matcher matches every call that `other` matches.
    pub fn covers(&self, other: &RouteMatch) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (Self::Service(a), Self::Service(b)) => a == b,
            (Self::Service(a), Self::Method { service, .. }) => a == service,
            (Self::Method { .. }, Self::Method { .. }) => self == other,
            _ => false,
        }
    }

    /// Whether a call to `service`/`method` matches.
    pub fn matches(&self, service: &str, method: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Service(s) => s == service,
            Self::Method { service: s, method: m } => s == service && m == method,
        }
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_qualified_name(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_identifier)
}
