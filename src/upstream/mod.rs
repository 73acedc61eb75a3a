//! Upstream clusters: the endpoints of one `upstreams.<name>` entry (static,
//! or discovered through DNS), a balancer that picks one per call, a
//! connection pool per endpoint, passive (outlier detection) and active
//! (health checks) health, limits that fail fast, retries, and the call
//! itself (`dispatch`).
//!
//! The upstream side knows nothing about the front ends: it takes an
//! `http::Request` whose body is a stream of gRPC frames and returns the
//! response. It never reads message contents.

mod balancer;
mod call;
mod clock;
mod discovery;
mod dispatch;
pub(crate) use dispatch::calm_message;
mod endpoint;
pub(crate) mod goaway_watch;
mod health_check;
mod limits;
mod outlier;
mod pool;
mod retry;
mod transport;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::{Authority, Scheme};
use tokio::sync::Notify;

pub(crate) use call::{Deadline, FAR_FUTURE, Outcome, StallLimit, UpstreamBody};
pub use discovery::{Resolve, SystemResolver};
pub(crate) use endpoint::Endpoint;
pub(crate) use limits::Admitted;
pub(crate) use limits::OVERLOADED_HEADER;
pub(crate) use pool::{PoolSettings, Slot, keepalive_message};
pub(crate) use transport::Transport;

use self::balancer::Balancer;
use self::clock::Clock;
use self::endpoint::Health;
use self::health_check::HealthSettings;
use self::limits::Limits;
use self::outlier::{OutlierDetector, OutlierSettings, Standing};
use self::pool::Pool;
use self::retry::Retries;
use crate::config;

/// How one call is to be made.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallOptions {
    /// Overall deadline: the route timeout for unary calls, capped by the client's `grpc-timeout`.
    pub(crate) deadline: Option<Deadline>,
    /// For streams: end the call when no message moved for this long.
    pub(crate) idle_timeout: Option<Duration>,
    /// Counted under `max_streams` rather than `max_requests`.
    pub(crate) streaming: bool,
    /// The request is one message (unary or server-streaming, known from the
    /// descriptors): read it whole before sending, so it can be resent.
    pub(crate) read_ahead: bool,
    /// A native gRPC call. With the relay on, such a call reaches the h2
    /// path only when the relay handed it on — most often for want of a
    /// relay connection or a free slot on one — so it takes a relay
    /// connection's slot (through the bridge) without making the pool open
    /// a plain connection (see `Pool::acquire`).
    pub(crate) native: bool,
}

/// DNS discovery state of a cluster.
struct Discovery {
    host: String,
    port: u16,
    every: Duration,
    /// `:authority` (and later SNI) for every discovered endpoint.
    authority: Authority,
    refresh: Arc<Notify>,
    /// Woken when the first resolution finished, so early calls can wait for it.
    resolved: Notify,
    resolved_once: std::sync::atomic::AtomicBool,
    last_error: Mutex<Option<String>>,
}

/// One named upstream cluster.
pub(crate) struct Cluster {
    pub(crate) name: Arc<str>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Endpoints discovery removed while they still had calls, for introspection.
    draining: Mutex<Vec<Weak<Endpoint>>>,
    balancer: Balancer,
    clock: Clock,
    scheme: Scheme,
    settings: Arc<PoolSettings>,
    detector: Arc<OutlierDetector>,
    limits: Arc<Limits>,
    retries: Arc<Retries>,
    max_replay_buffer: usize,
    health: Option<HealthSettings>,
    discovery: Option<Discovery>,
    resolver: Arc<dyn Resolve>,
}

impl Cluster {
    /// Builds a cluster; connections open on first use and background work
    /// (outlier evaluation, health checks, DNS) starts with `start`.
    pub(crate) fn new(
        name: &str,
        upstream: &config::Upstream,
        resolver: Arc<dyn Resolve>,
        tls: Option<crate::tls::ClientTls>,
    ) -> Result<Arc<Self>, String> {
        let scheme = if tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP };
        let settings = Arc::new(PoolSettings::from_config(upstream, tls));
        let clock = Clock::new();
        let detector = Arc::new(OutlierDetector::new(
            OutlierSettings::from_config(&upstream.outlier_detection),
            upstream.endpoints.len(),
        ));
        let discovery = match &upstream.dns {
            None => None,
            Some(dns) => {
                let (host, port) = discovery::split_host_port(dns)
                    .ok_or_else(|| format!("upstreams.{name}.dns: expected host:port, got \"{dns}\""))?;
                let authority: Authority = dns
                    .parse()
                    .map_err(|e| format!("upstreams.{name}.dns: \"{dns}\" is not a valid authority: {e}"))?;
                Some(Discovery {
                    host,
                    port,
                    every: upstream.dns_refresh.get(),
                    authority,
                    refresh: Arc::new(Notify::new()),
                    resolved: Notify::new(),
                    resolved_once: std::sync::atomic::AtomicBool::new(false),
                    last_error: Mutex::new(None),
                })
            }
        };
        let cluster = Arc::new(Self {
            name: Arc::from(name),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            draining: Mutex::new(Vec::new()),
            balancer: Balancer::new(upstream.balancer),
            clock,
            scheme,
            settings,
            detector,
            limits: Limits::new(&upstream.limits),
            retries: Retries::new(&upstream.retry),
            max_replay_buffer: upstream.retry.max_replay_buffer.as_usize(),
            health: upstream.health_check.as_ref().map(HealthSettings::from_config),
            discovery,
            resolver,
        });
        let mut endpoints = Vec::with_capacity(upstream.endpoints.len());
        for target in &upstream.endpoints {
            let authority: Authority = target
                .parse()
                .map_err(|e| format!("upstreams.{name}.endpoints: \"{target}\" is not a valid authority: {e}"))?;
            endpoints.push(cluster.make_endpoint(Arc::from(target.as_str()), authority));
        }
        cluster.endpoints.store(Arc::new(endpoints));
        Ok(cluster)
    }

    fn make_endpoint(&self, target: Arc<str>, authority: Authority) -> Arc<Endpoint> {
        let refresh = self.discovery.as_ref().map(|d| d.refresh.clone());
        let pool = Pool::new(target.clone(), self.settings.clone(), self.clock, refresh);
        let endpoint = Arc::new(Endpoint::new(
            target,
            authority,
            pool,
            self.detector.clone(),
            self.clock,
        ));
        endpoint.pool.set_endpoint(Arc::downgrade(&endpoint));
        endpoint
    }

    /// Starts the cluster's background work; each task ends when the cluster is dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let interval = self.detector.settings.interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                let endpoints = cluster.endpoints.load();
                cluster
                    .detector
                    .evaluate(endpoints.iter().map(|e| &e.outlier), cluster.clock.now_nanos());
            }
        });
        for endpoint in self.endpoints.load().iter() {
            self.start_health_check(endpoint);
        }
        if let Some(discovery) = &self.discovery {
            tokio::spawn(discovery::run(
                Arc::downgrade(self),
                discovery.host.clone(),
                discovery.port,
                discovery.every,
                self.resolver.clone(),
                discovery.refresh.clone(),
            ));
        }
    }

    fn start_health_check(&self, endpoint: &Arc<Endpoint>) {
        if let Some(settings) = &self.health {
            tokio::spawn(health_check::run(
                Arc::downgrade(endpoint),
                settings.clone(),
                self.limits.clone(),
            ));
        }
    }

    /// Replaces the discovered endpoint set: new addresses join, missing ones drain.
    fn set_endpoints(&self, addresses: &[std::net::SocketAddr]) {
        let Some(discovery) = &self.discovery else {
            return;
        };
        if let Ok(mut last) = discovery.last_error.lock() {
            *last = None;
        }
        let wanted: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        let current = self.endpoints.load_full();
        let mut next: Vec<Arc<Endpoint>> = current
            .iter()
            .filter(|e| wanted.iter().any(|w| **w == *e.target))
            .cloned()
            .collect();
        for endpoint in current.iter().filter(|e| !wanted.iter().any(|w| **w == *e.target)) {
            tracing::info!(upstream = %self.name, endpoint = %endpoint.target, "endpoint left DNS: draining");
            endpoint.drain();
            if let Ok(mut draining) = self.draining.lock() {
                draining.retain(|w| w.strong_count() > 0);
                draining.push(Arc::downgrade(endpoint));
            }
        }
        for address in &wanted {
            if !next.iter().any(|e| *e.target == **address) {
                tracing::info!(upstream = %self.name, endpoint = %address, "endpoint joined from DNS");
                let endpoint = self.make_endpoint(Arc::from(address.as_str()), discovery.authority.clone());
                self.start_health_check(&endpoint);
                next.push(endpoint);
            }
        }
        next.sort_by(|a, b| a.target.cmp(&b.target));
        self.detector.set_endpoint_count(next.len());
        self.endpoints.store(Arc::new(next));
        if !discovery.resolved_once.swap(true, std::sync::atomic::Ordering::AcqRel) {
            discovery.resolved.notify_waiters();
        }
    }

    fn discovery_failed(&self, why: String) {
        tracing::warn!(upstream = %self.name, "{why}");
        if let Some(discovery) = &self.discovery {
            if let Ok(mut last) = discovery.last_error.lock() {
                *last = Some(why);
            }
            if !discovery.resolved_once.swap(true, std::sync::atomic::Ordering::AcqRel) {
                discovery.resolved.notify_waiters();
            }
        }
    }

    /// Waits (bounded) for the first DNS answer, so calls at start-up are not refused.
    async fn first_resolution(&self) {
        if let Some(discovery) = &self.discovery {
            let notified = discovery.resolved.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !discovery.resolved_once.load(std::sync::atomic::Ordering::Acquire) {
                let _ = tokio::time::timeout(self.settings.pending_timeout, notified).await;
            }
        }
    }

    /// Whether some endpoint takes traffic now (for per-service health).
    /// Counts a call under the cluster's limits (`None`: over a limit,
    /// which is not counted as an overflow here).
    pub(crate) fn admit(&self, streaming: bool) -> Option<Admitted> {
        self.limits.try_admit(streaming)
    }

    /// Whether answers with some codes are retried (the relay leaves such
    /// calls to the h2 path, which keeps requests to resend them).
    pub(crate) fn retries_answers(&self) -> bool {
        self.retries.retries_any_code()
    }

    /// The most request bytes kept to resend a call.
    pub(crate) fn max_replay_buffer(&self) -> usize {
        self.max_replay_buffer
    }

    pub(crate) fn has_endpoint_in_service(&self) -> bool {
        let now = self.clock.now_nanos();
        self.endpoints.load().iter().any(|e| e.in_service(now))
    }

    /// Stops every pool: connections close as their calls finish.
    pub(crate) fn close(&self) {
        for endpoint in self.endpoints.load().iter() {
            endpoint.pool.close();
        }
    }

    /// What the cluster believes about itself and each endpoint now.
    pub(crate) fn snapshot(&self) -> ClusterSnapshot {
        let now = self.clock.now_nanos();
        let mut endpoints: Vec<EndpointSnapshot> =
            self.endpoints.load().iter().map(|e| self.describe(e, now)).collect();
        if let Ok(draining) = self.draining.lock() {
            endpoints.extend(
                draining
                    .iter()
                    .filter_map(Weak::upgrade)
                    .map(|e| self.describe(&e, now)),
            );
        }
        let (unary, streaming, pending) = self.limits.in_flight();
        ClusterSnapshot {
            name: self.name.to_string(),
            discovery: self.discovery.as_ref().map(|d| DiscoverySnapshot {
                name: format!("{}:{}", d.host, d.port),
                refresh: humantime(d.every),
                last_error: d.last_error.lock().ok().and_then(|e| e.clone()),
            }),
            unary_in_flight: unary,
            streams_in_flight: streaming,
            pending,
            overflows: self
                .limits
                .overflows()
                .iter()
                .map(|(o, n)| (o.as_str().to_string(), *n))
                .collect(),
            retries: self.retries.made.load(std::sync::atomic::Ordering::Relaxed),
            retries_refused_by_budget: self
                .retries
                .refused_by_budget
                .load(std::sync::atomic::Ordering::Relaxed),
            endpoints,
        }
    }

    fn describe(&self, e: &Endpoint, now: u64) -> EndpointSnapshot {
        let (calls, failures) = e.counters();
        let standing = e.outlier.standing(now);
        let state = if e.is_draining() {
            "draining"
        } else if e.health() == Health::Unhealthy {
            "unhealthy"
        } else {
            match standing {
                Standing::InService if e.pool.in_backoff(now) => "backing_off",
                Standing::InService => "healthy",
                Standing::Ejected { .. } => "ejected",
                Standing::ProbeDue | Standing::Probing => "probing",
            }
        };
        let ejected_for = match standing {
            Standing::Ejected { until_nanos } => Some(Duration::from_nanos(until_nanos - now).as_secs_f64()),
            _ => None,
        };
        EndpointSnapshot {
            target: e.target.to_string(),
            state,
            health: match e.health() {
                Health::Unknown => "unknown",
                Health::Healthy => "healthy",
                Health::Unhealthy => "unhealthy",
            },
            in_flight: e.in_flight(),
            calls,
            failures,
            rtt_ms: e.rtt_estimate(&self.clock).as_secs_f64() * 1000.0,
            connections: e.pool.connection_loads(),
            ejected_for_seconds: ejected_for,
            ejection_reason: (standing != Standing::InService).then(|| e.outlier.reason()).flatten(),
            times_ejected: e.outlier.times_ejected(),
            total_ejections: e.outlier.total_ejections(),
            ejections_by_reason: e
                .outlier
                .ejections_by_reason()
                .iter()
                .map(|(r, n)| (r.as_str(), *n))
                .collect(),
            calls_by_code: e
                .code_counts()
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, n)| (crate::status::Code::ALL[i].as_str(), *n))
                .collect(),
            enhance_your_calm: e.pool.refused_our_traffic(),
            last_error: e.pool.last_error(),
        }
    }
}

fn humantime(d: Duration) -> String {
    config::Duration(d).to_string()
}

/// A cluster as `/upstreams` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClusterSnapshot {
    /// The `upstreams` key.
    pub name: String,
    /// DNS discovery, when configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoverySnapshot>,
    /// Unary calls in flight (under `limits.max_requests`).
    pub unary_in_flight: u32,
    /// Streaming calls in flight (under `limits.max_streams`).
    pub streams_in_flight: u32,
    /// Calls waiting for a connection or stream slot.
    pub pending: u32,
    /// Calls refused at once, per limit.
    pub overflows: Vec<(String, u64)>,
    /// Retries made on `retry.on` codes.
    pub retries: u64,
    /// Retries not made because the retry budget was spent.
    pub retries_refused_by_budget: u64,
    /// Every endpoint, including ones draining after discovery removed them.
    pub endpoints: Vec<EndpointSnapshot>,
}

/// DNS discovery as `/upstreams` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiscoverySnapshot {
    /// `host:port` resolved.
    pub name: String,
    /// How often.
    pub refresh: String,
    /// The last resolution problem, if the last resolution failed.
    pub last_error: Option<String>,
}

/// An endpoint as `/upstreams` and the tests see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointSnapshot {
    /// `host:port`.
    pub target: String,
    /// `healthy`, `ejected`, `probing`, `unhealthy` (health checks), `draining`, or `backing_off` (connects failing).
    pub state: &'static str,
    /// What active health checks concluded: `unknown` (none configured or none
    /// finished yet), `healthy` or `unhealthy`.
    pub health: &'static str,
    /// Calls in flight.
    pub in_flight: u32,
    /// Calls started since start-up.
    pub calls: u64,
    /// Calls that failed (counted against the endpoint).
    pub failures: u64,
    /// Peak-EWMA latency estimate, milliseconds.
    pub rtt_ms: f64,
    /// Calls on each open connection.
    pub connections: Vec<u32>,
    /// Seconds until an ejection ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_seconds: Option<f64>,
    /// Why it was ejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejection_reason: Option<String>,
    /// The current ejection multiplier (decays while healthy).
    pub times_ejected: u32,
    /// Ejections since start-up.
    pub total_ejections: u64,
    /// Ejections since start-up, by reason (`consecutive_failures`, `failure_percentage`, `probe_failed`).
    pub ejections_by_reason: Vec<(&'static str, u64)>,
    /// Finished calls by gRPC code (codes never seen are left out).
    pub calls_by_code: Vec<(&'static str, u64)>,
    /// Connections the endpoint closed with `GOAWAY(ENHANCE_YOUR_CALM)`,
    /// judging the gateway's traffic abusive (typically: many streams it
    /// read already cancelled, after it stalled). Calls lost with them are
    /// not counted as failures.
    pub enhance_your_calm: u64,
    /// The last connect error.
    pub last_error: Option<String>,
}

/// Adds `x-forwarded-for` and `x-forwarded-proto` to a request's metadata.
pub(crate) fn add_forwarded(headers: &mut http::HeaderMap, client: Option<&HeaderValue>, proto: &'static str) {
    if let Some(client) = client {
        match headers.get(X_FORWARDED_FOR) {
            Some(existing) => {
                let mut joined = existing.as_bytes().to_vec();
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(client.as_bytes());
                if let Ok(value) = HeaderValue::from_bytes(&joined) {
                    headers.insert(X_FORWARDED_FOR, value);
                }
            }
            None => {
                headers.insert(X_FORWARDED_FOR, client.clone());
            }
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
