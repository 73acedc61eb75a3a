//! One call through a cluster: admission under the limits, picking an
//! endpoint (a due probe first, then the balancer, then — with no endpoint
//! in service left for the call — an ejected one, as Envoy's panic mode
//! does), taking a stream slot, sending, and waiting for the response
//! headers under the deadline.
//!
//! Attempts are repeated on another endpoint when the call provably never
//! reached a backend (connect failed, stream refused or above a GOAWAY's
//! last stream id, connection closing), and — within the retry budget —
//! when a backend answered trailers-only with a code in `retry.on`. Nothing
//! is retried once a response byte is on its way to the client: the
//! response is returned as soon as it has headers without a status.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use tokio::time::Instant;

use super::call::{
    Activity, CallGuard, Outcome, ReadAhead, Replay, RequestPump, Timers, read_ahead, status_for_stream_error,
};
use super::endpoint::Endpoint;
use super::limits::{OVERLOADED_HEADER, Overflow};
use super::pool::{ConnKind, PoolError};
use super::retry::{Pushback, pushback};
use super::{CallOptions, Cluster, UpstreamBody};
use crate::body::Body;
use crate::status::{Code, Status};
use crate::telemetry::{AttemptSpan, AttemptTracer};

/// Most tries of one call when connecting fails or its stream is refused.
const MAX_TRANSPARENT_ATTEMPTS: usize = 5;

/// How long a call that lost its connection waits to learn why it was lost
/// (the connection's task records it at once; this only bounds a stall).
const CONNECTION_END_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

impl Cluster {
    /// Makes one call and returns the response as soon as its headers arrive
    /// (the body streams on). Failures become gRPC trailers-only responses.
    pub(crate) async fn call(&self, request: Request<Body>, options: CallOptions) -> Response<Body> {
        let admitted = match self.limits.admit(options.streaming) {
            Ok(admitted) => admitted,
            Err(overflow) => return self.overloaded(overflow),
        };
        self.first_resolution().await;
        let (parts, body) = request.into_parts();
        // Endpoints this call already tried, by address (compared, never dereferenced).
        let mut tried: Vec<usize> = Vec::new();
        let mut last_failure = None;
        let mut retries_made = 0u32;
        let mut _retry_token = None;
        let client_deadline = options.deadline.is_some_and(|d| d.from_client);
        let mut timers = Timers::new(
            options.deadline,
            options.idle_timeout.map(|limit| (limit, Activity::new(self.clock))),
        );
        let pool_deadline = options.deadline.map(|d| d.at);
        let mut body = Some(body);
        let mut replay: Option<Replay> = None;
        if options.read_ahead
            && let Some(whole) = body.take()
        {
            match read_ahead(whole, self.max_replay_buffer, &mut timers).await {
                Ok(ReadAhead::Whole(kept)) => replay = Some(kept),
                Ok(ReadAhead::TooLarge(partly_read)) => body = Some(partly_read),
                Err(status) => return status.to_grpc_response(),
            }
        }
        let tracer = parts.extensions.get::<AttemptTracer>();
        let mut admitted = Some(admitted);

        for _attempt in 0..MAX_TRANSPARENT_ATTEMPTS + self.retries.max_attempts as usize {
            let Some((endpoint, probe)) = self.pick(&tried) else {
                break;
            };
            endpoint.begin_call();
            let kind = if options.native {
                ConnKind::Relay
            } else {
                ConnKind::Plain
            };
            let slot = match endpoint.pool.acquire(pool_deadline, &self.limits, kind).await {
                Ok(slot) => slot,
                Err(PoolError::Overflow { overflow, .. }) => {
                    endpoint.end_call(Outcome::Neutral, probe);
                    return self.overloaded(overflow);
                }
                Err(error) => {
                    let outcome = match error {
                        PoolError::Connect { .. } => Outcome::Failure,
                        _ => Outcome::Neutral,
                    };
                    endpoint.end_call(outcome, probe);
                    tried.push(Arc::as_ptr(&endpoint) as usize);
                    last_failure = Some(Status::new(Code::Unavailable, error.to_string()));
                    continue;
                }
            };
            let mut guard = CallGuard::new(endpoint, slot, probe, client_deadline);
            // A kept request is resent whole; otherwise the body is sent once.
            let Some(request_body) = replay.as_ref().and_then(Replay::body).or_else(|| body.take()) else {
                break;
            };
            let end_of_stream = request_body.is_end_stream();
            // One clock read: what is left of the deadline, and the start of
            // the round trip the balancer learns from.
            let started = Instant::now();
            let mut head = self.request_head(&parts, &guard.endpoint().authority, options.deadline, started);
            let span = tracer.map(|t| t.start(head.headers_mut()));
            let end_span = |span: Option<AttemptSpan>, target: &str, status: Option<&Status>| {
                if let Some(span) = span {
                    span.end(target, status);
                }
            };
            let (response, send) = match guard.slot().send_request(head, end_of_stream) {
                Ok(opened) => opened,
                Err(error) => {
                    // Nothing left us: the connection is going away. Try another.
                    guard.slot().retire_connection();
                    let status = Status::new(
                        Code::Unavailable,
                        format!("upstream {} connection closing: {error}", guard.endpoint().target),
                    );
                    end_span(span, &guard.endpoint().target, Some(&status));
                    last_failure = Some(status);
                    if replay.is_none() {
                        body = Some(request_body);
                    }
                    continue;
                }
            };
            if end_of_stream {
                drop(send);
            } else {
                let activity = timers.idle.as_ref().map(|(_, a)| a.clone());
                // A request not kept yet is recorded as it goes, in case it ends
                // before the first poll does and can still be resent.
                let record = replay.is_none().then(|| Replay::new(self.max_replay_buffer));
                let recording = record.is_some();
                let mut pump = RequestPump::new(request_body, send, record, activity);
                // Send inline what is there; only a body still arriving (or
                // waiting for flow-control window) gets a task of its own.
                match std::future::poll_fn(|cx| std::task::Poll::Ready(pump.poll_pump(cx))).await {
                    std::task::Poll::Ready(_) if recording => replay = pump.replay.take(),
                    std::task::Poll::Ready(_) => {}
                    std::task::Poll::Pending => {
                        if recording {
                            replay = None;
                        }
                        tokio::spawn(pump.run());
                    }
                }
            }

            let head_result = tokio::select! {
                biased;
                result = response => Ok(result),
                status = std::future::poll_fn(|cx| timers.poll_expired(cx)) => Err(status),
            };
            match head_result {
                Ok(Ok(response)) => {
                    guard.endpoint().observe_rtt_since(started);
                    // Most answers carry no status in their headers: read the
                    // whole status only when there is one.
                    let headers_status =
                        Code::in_headers(response.headers()).and_then(|_| Status::from_headers(response.headers()));
                    end_span(span, &guard.endpoint().target, headers_status.as_ref());
                    // A trailers-only answer with a code the operator opted into:
                    // nothing went to the client yet, so it may be retried.
                    if let Some(status) = headers_status
                        && self.retries.retries_code(status.code)
                        && retries_made + 1 < self.retries.max_attempts
                        && replay.as_ref().is_some_and(Replay::is_available)
                    {
                        let wait = match pushback(response.headers()) {
                            Pushback::Stop => None,
                            Pushback::Wait(wait) => Some(wait),
                            Pushback::None => Some(self.retries.backoff(retries_made + 1)),
                        };
                        let in_time = |wait| options.deadline.is_none_or(|d| Instant::now() + wait < d.at);
                        let active = {
                            let (unary, streams, _) = self.limits.in_flight();
                            unary + streams
                        };
                        if let Some(wait) = wait.filter(|w| in_time(*w))
                            && let Some(token) = self.retries.take_budget(active)
                        {
                            guard.finish_with(status.code);
                            self.avoid_next_time(&mut tried, guard.endpoint());
                            drop(guard);
                            drop(response);
                            _retry_token = Some(token);
                            retries_made += 1;
                            tracing::debug!(upstream = %self.name, code = %status.code, ?wait, "retrying");
                            // If no endpoint is left for the retry, the client gets this answer.
                            last_failure = Some(status);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                    }
                    guard.hold(admitted.take());
                    return self.response(response, guard, timers, retries_made);
                }
                Ok(Err(error)) => {
                    let unprocessed =
                        error.reason() == Some(h2::Reason::REFUSED_STREAM) || (error.is_go_away() && error.is_remote());
                    let (mut status, outcome) = status_for_stream_error(&error, &guard.endpoint().target);
                    if error.is_go_away() || error.is_io() {
                        guard.slot().retire_connection();
                        guard.mark_connection_lost();
                        // The connection's task records why it ended a moment
                        // after its streams fail; the client should hear why.
                        if !unprocessed
                            && let Some(end) = guard.slot().wait_for_connection_end(CONNECTION_END_WAIT).await
                            && let Some(said) = end.lost_call_status(&guard.endpoint().target)
                        {
                            status = said;
                        }
                    }
                    end_span(span, &guard.endpoint().target, Some(&status));
                    if unprocessed && replay.as_ref().is_some_and(Replay::is_available) {
                        // The backend never processed it: safe to send elsewhere.
                        guard.finish(Outcome::Neutral);
                        self.avoid_next_time(&mut tried, guard.endpoint());
                        last_failure = Some(status);
                        continue;
                    }
                    guard.finish(if unprocessed { Outcome::Neutral } else { outcome });
                    guard.set_code(status.code);
                    return status.to_grpc_response();
                }
                Err((status, outcome)) => {
                    end_span(span, &guard.endpoint().target, Some(&status));
                    guard.finish(outcome);
                    guard.set_code(status.code);
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

    /// Keeps the next attempt off `endpoint` when another endpoint in service
    /// is left to try; with none left, the same endpoint is tried again (on a
    /// fresh stream, or a fresh connection after a GOAWAY), as Envoy does
    /// without a retry host predicate.
    fn avoid_next_time(&self, tried: &mut Vec<usize>, endpoint: &Arc<Endpoint>) {
        let current = Arc::as_ptr(endpoint) as usize;
        let now = self.clock.now_nanos();
        let another_left = self.endpoints.load().iter().any(|e| {
            let address = Arc::as_ptr(e) as usize;
            address != current && !tried.contains(&address) && e.in_service(now)
        });
        if another_left {
            tried.push(current);
        }
    }

    /// The endpoint for the next attempt, and whether the call is its probe.
    /// Gives back a pick whose call did not go to `endpoint` after all (the
    /// relay could not carry it and the h2 path picks again): its probe, or
    /// its round-robin turn.
    pub(crate) fn give_back(&self, endpoint: &Endpoint, probe: bool) {
        match probe {
            true => endpoint.release_probe(),
            false => self.balancer.unpick(),
        }
    }

    pub(crate) fn pick(&self, tried: &[usize]) -> Option<(Arc<Endpoint>, bool)> {
        let endpoints = self.endpoints.load();
        let now = self.clock.now_nanos();
        let untried = |e: &Endpoint| !tried.contains(&(std::ptr::from_ref(e) as usize));
        // An endpoint whose ejection ran out gets the next call as its probe.
        if self.detector.any_ejected()
            && let Some(probe) = endpoints.iter().find(|e| untried(e) && e.claim_probe(now))
        {
            return Some((probe.clone(), true));
        }
        self.balancer
            .pick(&endpoints, now, |e| {
                untried(e) && e.in_service(now) && !e.pool.in_backoff(now)
            })
            // Every endpoint is backing off after connect failures: try one
            // anyway rather than fail without trying.
            .or_else(|| self.balancer.pick(&endpoints, now, |e| untried(e) && e.in_service(now)))
            // No endpoint in service is left to try: every one is ejected (a
            // one-endpoint upstream, `max_ejection_percent: 100`), or those
            // that are not already refused this call's connection. Use the
            // ejected ones, as Envoy's panic mode does, rather than fail the
            // call. They stay ejected, and are readmitted by their probe as usual.
            .or_else(|| {
                self.balancer
                    .pick(&endpoints, now, |e| untried(e) && e.in_service_if_ejections_ignored())
            })
            .map(|e| (e.clone(), false))
    }

    /// The HTTP/2 request head for the upstream: the client's method, path
    /// and metadata, and what remains of the deadline as `grpc-timeout`.
    fn request_head(
        &self,
        parts: &http::request::Parts,
        endpoint: &http::uri::Authority,
        deadline: Option<super::Deadline>,
        now: Instant,
    ) -> Request<()> {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(parts.uri.authority().cloned().unwrap_or_else(|| endpoint.clone()));
        uri.path_and_query = parts.uri.path_and_query().cloned();
        let mut head = Request::new(());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = Uri::from_parts(uri).unwrap_or_default();
        *head.version_mut() = Version::HTTP_2;
        *head.headers_mut() = parts.headers.clone();
        if let Some(deadline) = deadline {
            let remaining = deadline.at.saturating_duration_since(now);
            head.headers_mut().insert(
                crate::grpc_timeout::GRPC_TIMEOUT,
                crate::grpc_timeout::encode(remaining),
            );
        }
        head
    }

    /// The client's response, marked with the endpoint that served it.
    fn response(
        &self,
        response: http::Response<h2::RecvStream>,
        guard: CallGuard,
        timers: Timers,
        retries: u32,
    ) -> Response<Body> {
        let served = crate::telemetry::Served {
            endpoint: guard.endpoint().target.clone(),
            retries,
        };
        let mut response = self.convert(response, guard, timers);
        response.extensions_mut().insert(served);
        response
    }

    fn convert(
        &self,
        response: http::Response<h2::RecvStream>,
        mut guard: CallGuard,
        timers: Timers,
    ) -> Response<Body> {
        let (parts, recv) = response.into_parts();
        if parts.status != StatusCode::OK {
            let code = Code::from_http_status(parts.status);
            guard.finish_with(code);
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
                .map_or("none".into(), |v| String::from_utf8_lossy(v.as_bytes()).into_owned());
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

    /// The answer when a limit is hit: UNAVAILABLE naming the limit.
    fn overloaded(&self, overflow: Overflow) -> Response<Body> {
        let status = Status::new(
            Code::Unavailable,
            format!(
                "upstream {} overloaded: {} ({}) reached",
                self.name,
                overflow.as_str(),
                self.limits.limit_of(overflow)
            ),
        );
        let mut response = status.to_grpc_response();
        response
            .headers_mut()
            .insert(OVERLOADED_HEADER, HeaderValue::from_static(overflow.as_str()));
        response
    }
}

/// What a call lost with a connection its backend closed with
/// GOAWAY(ENHANCE_YOUR_CALM) hears.
pub(crate) fn calm_message(target: &str) -> String {
    format!(
        "upstream {target} closed the connection with ENHANCE_YOUR_CALM (it judged the traffic on it abusive, \
         typically many calls cancelled while it stalled); the call was lost with it"
    )
}
