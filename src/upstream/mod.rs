//! Upstream clusters: the endpoints of one `upstreams.<name>` entry, a
//! balancer that picks one per call, a connection pool per endpoint, and the
//! call itself (request pump, response body, deadlines, transparent retry of
//! calls that provably never reached a backend).
//!
//! The upstream side knows nothing about the front ends: it takes an
//! `http::Request` whose body is a stream of gRPC frames and returns the
//! response. It never reads message contents.

mod balancer;
mod call;
mod clock;
mod endpoint;
mod pool;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::time::Instant;

pub(crate) use call::{Deadline, Outcome, UpstreamBody};

use self::balancer::Balancer;
use self::call::{Activity, CallGuard, Replay, RequestPump, Timers, status_for_stream_error};
use self::clock::Clock;
use self::endpoint::Endpoint;
use self::pool::{Pool, PoolSettings};
use crate::body::Body;
use crate::config;
use crate::status::{Code, Status};

/// How one call is to be made.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CallOptions {
    /// Overall deadline: the route timeout for unary calls, capped by the client's `grpc-timeout`.
    pub(crate) deadline: Option<Deadline>,
    /// For streams: end the call when no message moved for this long.
    pub(crate) idle_timeout: Option<Duration>,
}

/// One named upstream cluster.
pub(crate) struct Cluster {
    pub(crate) name: Arc<str>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balancer: Balancer,
    clock: Clock,
    scheme: Scheme,
    max_attempts: u32,
    max_replay_buffer: usize,
}

/// Most endpoints one call tries when connecting fails or its stream is refused.
const MAX_TRANSPARENT_ATTEMPTS: usize = 5;

impl Cluster {
    /// Builds a cluster with static endpoints; connections open on first use.
    pub(crate) fn from_config(
        name: &str,
        upstream: &config::Upstream,
    ) -> Result<Arc<Self>, String> {
        let settings = Arc::new(PoolSettings::from_config(upstream));
        let clock = Clock::new();
        let endpoints = upstream
            .endpoints
            .iter()
            .map(|target| {
                let authority: Authority = target.parse().map_err(|e| {
                    format!(
                        "upstreams.{name}.endpoints: \"{target}\" is not a valid authority: {e}"
                    )
                })?;
                let target: Arc<str> = Arc::from(target.as_str());
                let pool = Pool::new(target.clone(), settings.clone(), clock);
                Ok(Arc::new(Endpoint::new(target, authority, pool)))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Arc::new(Self {
            name: Arc::from(name),
            endpoints: ArcSwap::from_pointee(endpoints),
            balancer: Balancer::new(upstream.balancer),
            clock,
            scheme: Scheme::HTTP,
            max_attempts: upstream.retry.max_attempts,
            max_replay_buffer: upstream.retry.max_replay_buffer.as_usize(),
        }))
    }

    /// Stops every pool: connections close as their calls finish.
    pub(crate) fn close(&self) {
        for endpoint in self.endpoints.load().iter() {
            endpoint.pool.close();
        }
    }

    /// What the cluster believes about each endpoint now.
    pub(crate) fn snapshot(&self) -> Vec<EndpointSnapshot> {
        let now = self.clock.now_nanos();
        self.endpoints
            .load()
            .iter()
            .map(|e| {
                let (calls, failures) = e.counters();
                EndpointSnapshot {
                    target: e.target.to_string(),
                    in_flight: e.in_flight(),
                    calls,
                    failures,
                    rtt: e.rtt_estimate(&self.clock),
                    connections: e.pool.connection_loads(),
                    backing_off: e.pool.in_backoff(now),
                    last_error: e.pool.last_error(),
                }
            })
            .collect()
    }

    /// Makes one call: picks an endpoint, takes a stream, sends, and returns
    /// the response as soon as its headers arrive (the body streams on).
    /// Failures become gRPC trailers-only responses; this never panics on input.
    pub(crate) async fn call(
        &self,
        request: Request<Body>,
        options: CallOptions,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let mut body = Some(body);
        let mut replay: Option<Replay> = None;
        // Endpoints this call already tried, by address (compared, never dereferenced).
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure = None;
        let mut timers = Timers::new(
            options.deadline,
            options
                .idle_timeout
                .map(|limit| (limit, Activity::new(self.clock))),
        );
        let pool_deadline = options.deadline.map(|d| d.at);

        for _attempt in 0..MAX_TRANSPARENT_ATTEMPTS.max(self.max_attempts as usize) {
            let Some(endpoint) = self.pick(&tried) else {
                break;
            };
            endpoint.begin_call();
            let slot = match endpoint.pool.acquire(pool_deadline).await {
                Ok(slot) => slot,
                Err(error) => {
                    endpoint.end_call(true);
                    tried.push(Arc::as_ptr(&endpoint) as usize);
                    last_failure = Some(Status::new(Code::Unavailable, error.to_string()));
                    continue;
                }
            };
            let mut guard = CallGuard::new(endpoint, slot);
            let Some(request_body) = body
                .take()
                .or_else(|| replay.as_ref().and_then(Replay::body))
            else {
                break;
            };
            let end_of_stream = request_body.is_end_stream();
            let head = self.request_head(&parts, &guard.endpoint().authority, options.deadline);
            let (response, send) = match guard.slot().send_request(head, end_of_stream) {
                Ok(opened) => opened,
                Err(error) => {
                    // Nothing left us: the connection is going away. Try another.
                    guard.slot().retire_connection();
                    guard.finish(Outcome::Neutral);
                    last_failure = Some(Status::new(
                        Code::Unavailable,
                        format!(
                            "upstream {} connection closing: {error}",
                            guard.endpoint().target
                        ),
                    ));
                    body = Some(request_body);
                    continue;
                }
            };
            let started = Instant::now();
            if !end_of_stream {
                let idle_activity = timers.idle.as_ref().map(|(_, a)| a.clone());
                let mut pump = RequestPump::new(
                    request_body,
                    send,
                    Some(Replay::new(self.max_replay_buffer)),
                    idle_activity,
                );
                // Most unary requests are already complete: send them inline
                // and keep them for a retry; only a body still arriving gets a task.
                match std::future::poll_fn(|cx| std::task::Poll::Ready(pump.poll_pump(cx))).await {
                    std::task::Poll::Ready(_) => replay = pump.replay.take(),
                    std::task::Poll::Pending => {
                        replay = None;
                        tokio::spawn(pump.run());
                    }
                }
            } else {
                drop(send);
            }

            let head_result = tokio::select! {
                biased;
                result = response => Ok(result),
                status = std::future::poll_fn(|cx| timers.poll_expired(cx)) => Err(status),
            };
            match head_result {
                Ok(Ok(response)) => {
                    guard.endpoint().observe_rtt(&self.clock, started.elapsed());
                    return self.response(response, guard, timers);
                }
                Ok(Err(error)) => {
                    let unprocessed = error.reason() == Some(h2::Reason::REFUSED_STREAM)
                        || (error.is_go_away() && error.is_remote());
                    if error.is_go_away() || error.is_io() {
                        guard.slot().retire_connection();
                    }
                    let (status, outcome) =
                        status_for_stream_error(&error, &guard.endpoint().target);
                    if unprocessed {
                        // The backend never processed it: safe to send elsewhere.
                        guard.finish(Outcome::Neutral);
                        tried.push(Arc::as_ptr(guard.endpoint()) as usize);
                        if replay.as_ref().and_then(Replay::body).is_some() {
                            last_failure = Some(status);
                            continue;
                        }
                    } else {
                        guard.finish(outcome);
                    }
                    return status.to_grpc_response();
                }
                Err(status) => {
                    guard.finish(timers.deadline_outcome());
                    return status.to_grpc_response();
                }
            }
        }
        last_failure
            .unwrap_or_else(|| {
                Status::new(
                    Code::Unavailable,
                    format!("upstream {} has no endpoint available", self.name),
                )
            })
            .to_grpc_response()
    }

    fn pick(&self, tried: &[usize]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        let now = self.clock.now_nanos();
        let untried = |e: &Endpoint| !tried.contains(&(std::ptr::from_ref(e) as usize));
        self.balancer
            .pick(&endpoints, now, |e| untried(e) && !e.pool.in_backoff(now))
            // Every endpoint is backing off after connect failures: try one anyway
            // rather than fail without trying.
            .or_else(|| self.balancer.pick(&endpoints, now, untried))
            .cloned()
    }

    /// The HTTP/2 request head for the upstream: the client's method, path
    /// and metadata, and what remains of the deadline as `grpc-timeout`.
    fn request_head(
        &self,
        parts: &http::request::Parts,
        endpoint: &Authority,
        deadline: Option<Deadline>,
    ) -> Request<()> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(
            parts
                .uri
                .authority()
                .cloned()
                .unwrap_or_else(|| endpoint.clone()),
        );
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let mut head = Request::new(());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        *head.version_mut() = Version::HTTP_2;
        *head.headers_mut() = parts.headers.clone();
        if let Some(deadline) = deadline {
            let remaining = deadline.at.saturating_duration_since(Instant::now());
            head.headers_mut().insert(
                crate::grpc_timeout::GRPC_TIMEOUT,
                crate::grpc_timeout::encode(remaining),
            );
        }
        head
    }

    fn response(
        &self,
        response: http::Response<h2::RecvStream>,
        mut guard: CallGuard,
        timers: Timers,
    ) -> Response<Body> {
        let (parts, recv) = response.into_parts();
        if parts.status != StatusCode::OK {
            let code = Code::from_http_status(parts.status);
            guard.finish(Outcome::of_code(code));
            return Status::new(
                code,
                format!(
                    "upstream {} answered HTTP {} instead of gRPC",
                    guard.endpoint().target,
                    parts.status
                ),
            )
            .to_grpc_response();
        }
        let is_grpc = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        if !is_grpc {
            guard.finish(Outcome::Failure);
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map_or("none".into(), |v| {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                });
            return Status::new(
                Code::Unknown,
                format!(
                    "upstream {} answered with content-type {content_type}, not gRPC",
                    guard.endpoint().target
                ),
            )
            .to_grpc_response();
        }
        let body = UpstreamBody::new(recv, timers, &parts.headers, guard);
        Response::from_parts(parts, Body::upstream(body))
    }
}

/// An endpoint as `/upstreams` and the tests see it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EndpointSnapshot {
    /// `host:port`.
    pub target: String,
    /// Calls in flight.
    pub in_flight: u32,
    /// Calls started since start-up.
    pub calls: u64,
    /// Calls that failed (counted against the endpoint).
    pub failures: u64,
    /// Latency estimate.
    #[serde(serialize_with = "serialize_duration_ms")]
    pub rtt: Duration,
    /// Calls on each open connection.
    pub connections: Vec<u32>,
    /// Connecting failed recently; the balancer avoids it for a while.
    pub backing_off: bool,
    /// The last connect error.
    pub last_error: Option<String>,
}

fn serialize_duration_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Adds `x-forwarded-for` and `x-forwarded-proto` to a request's metadata.
pub(crate) fn add_forwarded(
    headers: &mut http::HeaderMap,
    client: Option<&HeaderValue>,
    proto: &'static str,
) {
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

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
