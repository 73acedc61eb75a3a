//! The client connection's role in the relay: each new stream is a call,
//! routed by its `:path`, sent to an endpoint the cluster's balancer picks,
//! on one of that endpoint's relay connections. A call that cannot be
//! routed is answered here, trailers-only, as the h2 path answers it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::conn::{self, Handler, ReadLimits, Wakes};
use super::frame::{self, FrameError, Settings};
use super::side::{CallTelemetry, Expiry, Fields, Half, Role, Side, Windows};
use crate::gateway::{ConnInfo, Gateway};
use crate::routing::Upstream;
use crate::server::Limits;
use crate::server::resets::{is_early_reset, too_many};
use crate::status::{Code, Status};
use crate::telemetry::trace::{self, TraceContext};
use crate::telemetry::{CallRecord, CallStart, Protocol, Served};
use crate::upstream::{Deadline, Endpoint, Outcome};

/// Serves one client's HTTP/2 connection through the relay. `io` starts
/// with the client preface.
pub(crate) async fn serve<IO>(
    mut io: IO,
    gateway: Gateway,
    info: Arc<ConnInfo>,
    limits: Arc<Limits>,
    mut stopped: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    super::SERVING.store(true, std::sync::atomic::Ordering::Relaxed);
    let windows = Windows {
        stream: limits.stream_window,
        connection: limits.connection_window,
    };
    let settings = Settings {
        max_concurrent_streams: Some(limits.max_concurrent_streams),
        initial_window_size: Some(limits.stream_window),
        max_header_list_size: Some(limits.max_header_list_size),
        ..Settings::default()
    };
    let side = Side::opening(Role::Client, windows, std::sync::Weak::new(), settings);
    let read_limits = ReadLimits {
        max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
        max_header_list_size: limits.max_header_list_size,
        header_table_size: 4096,
    };
    let idle_period = match limits.idle_timeout {
        Duration::ZERO => *crate::upstream::FAR_FUTURE - Instant::now(),
        idle => idle,
    };
    let already_stopping = *stopped.borrow();
    let stopped_for_fallback = stopped.clone();
    let handler = ClientHandler {
        gateway,
        info,
        max_streams: limits.max_concurrent_streams,
        last_opened: 0,
        upstream_fields: Fields::default(),
        timer: Box::pin(tokio::time::sleep_until(*crate::upstream::FAR_FUTURE)),
        armed: None,
        stopping: Box::pin(async move {
            if !already_stopping {
                let _ = stopped.changed().await;
            }
        }),
        retire: Box::pin(tokio::time::sleep_until(crate::server::connection_retirement(&limits))),
        idle_check: tokio::time::interval_at(Instant::now() + idle_period, idle_period),
        accepted: 0,
        accepted_at_check: 0,
        idle_at_check: false,
        early_resets: 0,
        limits,
        fallback: None,
        stopped: stopped_for_fallback,
    };
    conn::run(&mut io, side, handler, read_limits, true).await;
    crate::server::h2::linger(&mut io).await;
}

/// Most endpoints a call refused unprocessed is sent to, as on the h2 path.
const MAX_ATTEMPTS: usize = 5;

/// The next attempt of a call a backend refused unprocessed.
struct Attempt {
    fields: Fields,
    data: Vec<bytes::Bytes>,
    /// The client's request is complete.
    ended: bool,
    deadline: Option<Instant>,
    tried: Vec<usize>,
    credited: u32,
    why: Status,
}

struct ClientHandler {
    gateway: Gateway,
    info: Arc<ConnInfo>,
    max_streams: u32,
    last_opened: u32,
    /// Scratch: the request headers as the backend gets them.
    upstream_fields: Fields,
    /// Fires at the soonest call deadline.
    timer: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// Ready once the server starts shutting down.
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Fires at the connection's `max_connection_age`.
    retire: Pin<Box<Sleep>>,
    /// Ticks every `idle_timeout`: a connection with no call at two ticks in
    /// a row, and none opened between, is closed.
    idle_check: tokio::time::Interval,
    accepted: u64,
    accepted_at_check: u64,
    idle_at_check: bool,
    /// Streams the client reset early (the rapid-reset guard).
    early_resets: u32,
    limits: Arc<Limits>,
    /// The in-process connection to the h2 path, for calls not relayed.
    fallback: Option<Arc<Side>>,
    stopped: watch::Receiver<bool>,
}

impl ClientHandler {
    /// Takes a new call: relayed to a backend when it is native gRPC to a
    /// network upstream with a connection up, under the cluster's limits,
    /// not to be retried on its answer's code, and not traced; otherwise
    /// handed to the gateway's h2 path in-process, which does everything else.
    fn open(&mut self, side: &Arc<Side>, stream: u32, end_stream: bool, fields: &Fields, wakes: &mut Wakes) {
        wakes.add(side);
        self.accepted += 1;
        if !self.relay(side, stream, end_stream, fields, wakes) {
            self.hand_over(side, stream, end_stream, fields, wakes);
        }
    }

    /// Relays the call; `false` leaves it to the h2 path.
    fn relay(&mut self, side: &Arc<Side>, stream: u32, end_stream: bool, fields: &Fields, wakes: &mut Wakes) -> bool {
        let grpc = fields.get(b":method") == Some(b"POST")
            && fields
                .get(b"content-type")
                .is_some_and(|t| t.starts_with(b"application/grpc") && !t.starts_with(b"application/grpc-web"));
        if !grpc {
            return false;
        }
        let path = fields
            .get(b":path")
            .and_then(|p| std::str::from_utf8(p).ok())
            .unwrap_or("");
        // A call the gateway refuses (no route, a malformed timeout) is
        // rare: the h2 path answers it, with its metrics and access line.
        let Some(target) = self.gateway.routes().resolve(path) else {
            return false;
        };
        let Upstream::Cluster(cluster) = &target.upstream else {
            return false;
        };
        if cluster.retries_answers() {
            return false;
        }
        // Exported spans (per call and per attempt) are the h2 path's work.
        if self.gateway.telemetry().exporter.is_some() {
            return false;
        }
        // A client's trace is continued as on the h2 path: the gateway's span
        // becomes the backend's parent, and an invalid `traceparent` is dropped.
        let trace = fields.get(b"traceparent").and_then(trace::continued_from);
        let received = crate::turn::now();
        let client_timeout = match fields.get(b"grpc-timeout").map(crate::grpc_timeout::parse) {
            None => None,
            Some(Ok(timeout)) => Some(timeout),
            Some(Err(_)) => return false,
        };
        let streaming = target.kind.is_none_or(|kind| kind.is_streaming());
        // Over a limit, the h2 path answers, and counts the overflow.
        let Some(admitted) = cluster.admit(streaming) else {
            return false;
        };
        let Some((endpoint, probe)) = cluster.pick(&[]) else {
            return false;
        };
        let Some((slot, upstream)) = endpoint.pool.try_acquire_relay() else {
            cluster.give_back(&endpoint, probe);
            return false;
        };
        let idle = streaming.then_some(target.stream_idle_timeout);
        let deadline = crate::passthrough::deadline(received, client_timeout, (!streaming).then_some(target.timeout));
        // What is left of the deadline as it leaves: read from the clock,
        // not the turn's time, so the time the call spent here counts (a
        // clock read only for calls that have a deadline).
        let remaining = deadline.map(|d| d.at.saturating_duration_since(Instant::now()));
        forwarded_fields(&mut self.upstream_fields, &self.info, fields, remaining, trace.as_ref());
        // This leg first: the backend may answer as soon as the request
        // headers leave, and its answer must find this leg open.
        side.lock().open(stream, upstream.clone(), 0);
        let opened = upstream.lock().open_next(
            side.clone(),
            stream,
            &self.upstream_fields,
            end_stream,
            received,
            probe,
            Some(slot),
        );
        let Some(upstream_stream) = opened else {
            side.lock().remove(stream);
            cluster.give_back(&endpoint, probe);
            return false;
        };
        let record = CallRecord::start(
            self.gateway.telemetry(),
            CallStart {
                protocol: Protocol::Grpc,
                grpc_path: path,
                http_method: &http::Method::POST,
                http_path: path,
                client: self.info.remote,
                peer: None,
                trace,
                streaming,
                started: received.into_std(),
            },
        );
        record.set_served(Some(&Served {
            endpoint: endpoint.target.clone(),
            retries: 0,
        }));
        let mut state = side.lock();
        if deadline.is_some() || idle.is_some() {
            let deadline = deadline.map(|Deadline { at, from_client }| (at, from_client));
            state.set_timers(stream, deadline, idle, received);
        }
        if let Some(half) = state.half_mut(stream) {
            half.peer_stream = upstream_stream;
            half.opened = Some((received, client_timeout));
            half.telemetry = Some(CallTelemetry::new(record));
            // Counted until the client has the whole answer, as on the h2 path.
            half.admitted = Some(admitted);
        }
        let endpoint_id = Arc::as_ptr(&endpoint) as usize;
        state.keep_replay(stream, &self.upstream_fields, endpoint_id, cluster.max_replay_buffer());
        if end_stream {
            state.received_end(stream);
        }
        drop(state);
        wakes.add(&upstream);
        true
    }

    /// Passes the call, as the client sent it, to the gateway's h2 path
    /// over this connection's in-process fallback connection.
    fn hand_over(&mut self, side: &Arc<Side>, stream: u32, end_stream: bool, fields: &Fields, wakes: &mut Wakes) {
        let fallback = match &self.fallback {
            Some(fallback) if !fallback.lock().is_closed() => fallback.clone(),
            _ => {
                let (gateway, info, limits, stopped) = (
                    self.gateway.clone(),
                    self.info.clone(),
                    self.limits.clone(),
                    self.stopped.clone(),
                );
                // Each stream's window toward the h2 path is the client's own,
                // so the relay holds no more of an answer than the client
                // would have taken: a client that stops reading stops the h2
                // path's call as if the relay were not there.
                let windows = Windows {
                    stream: side.lock().peer_stream_window(),
                    connection: limits.connection_window,
                };
                let fallback = super::upstream::fallback(
                    move |io| crate::server::h2::serve(io, gateway, info, limits, stopped),
                    windows,
                );
                self.fallback = Some(fallback.clone());
                fallback
            }
        };
        let opened = super::side::open_unchanged(side, stream, &fallback, fields, end_stream);
        let mut state = side.lock();
        match opened {
            Some(fallback_stream) => {
                if let Some(half) = state.half_mut(stream) {
                    half.peer_stream = fallback_stream;
                }
                if end_stream {
                    state.received_end(stream);
                }
                wakes.add(&fallback);
            }
            None => {
                state.remove(stream);
                state.respond(
                    stream,
                    &Status::new(Code::Unavailable, "the gateway is shutting down"),
                    end_stream,
                );
            }
        }
    }

    /// Sends a call a backend refused unprocessed to another endpoint, with
    /// its kept request; with no endpoint left to try (or none with a relay
    /// connection up), the client hears the refusal.
    fn resend(&mut self, side: &Arc<Side>, stream: u32, wakes: &mut Wakes) {
        let attempt = {
            let mut state = side.lock();
            let deadline = state.deadline(stream);
            state.half_mut(stream).and_then(|half| {
                let ended = half.end_received;
                let replay = half.replay.as_mut()?;
                let why = replay.refused.take()?;
                Some(Attempt {
                    fields: replay.fields.clone(),
                    data: replay.data.clone(),
                    ended,
                    deadline,
                    tried: replay.tried.clone(),
                    credited: replay.credited,
                    why,
                })
            })
        };
        let Some(attempt) = attempt else {
            return;
        };
        wakes.add(side);
        let Some((upstream, upstream_stream, endpoint)) = self.open_elsewhere(side, stream, &attempt, wakes) else {
            side.lock().fail(stream, &attempt.why);
            return;
        };
        tracing::debug!(endpoint = %endpoint.target, "resending a call its backend refused unprocessed");
        let mut state = side.lock();
        if let Some(half) = state.half_mut(stream) {
            half.peer = upstream;
            half.peer_stream = upstream_stream;
            if let Some(replay) = half.replay.as_mut() {
                replay.tried.push(Arc::as_ptr(&endpoint) as usize);
            }
            if let Some(telemetry) = &half.telemetry {
                telemetry.served_by(&endpoint.target);
            }
        }
    }

    /// Opens the next attempt of a refused call on another endpoint's relay
    /// connection and sends its kept request there.
    fn open_elsewhere(
        &mut self,
        side: &Arc<Side>,
        stream: u32,
        attempt: &Attempt,
        wakes: &mut Wakes,
    ) -> Option<(Arc<Side>, u32, Arc<Endpoint>)> {
        if attempt.tried.len() >= MAX_ATTEMPTS {
            return None;
        }
        let path = attempt.fields.get(b":path").and_then(|p| std::str::from_utf8(p).ok())?;
        let target = self.gateway.routes().resolve(path)?;
        let Upstream::Cluster(cluster) = &target.upstream else {
            return None;
        };
        let (endpoint, probe) = cluster.pick(&attempt.tried)?;
        let Some((slot, upstream)) = endpoint.pool.try_acquire_relay() else {
            cluster.give_back(&endpoint, probe);
            return None;
        };
        let now = crate::turn::now();
        // The headers as first sent, with what is left of the deadline now.
        self.upstream_fields.clear();
        for (name, value) in attempt.fields.iter().filter(|(name, _)| *name != b"grpc-timeout") {
            self.upstream_fields.push(name, value);
        }
        if let Some(at) = attempt.deadline {
            let remaining = at.saturating_duration_since(now);
            let mut text = crate::grpc_timeout::Text::default();
            self.upstream_fields.push(b"grpc-timeout", text.encode(remaining));
        }
        let mut credits = Vec::new();
        let mut state = upstream.lock();
        let end_with_headers = attempt.ended && attempt.data.is_empty();
        let Some(upstream_stream) = state.open_next(
            side.clone(),
            stream,
            &self.upstream_fields,
            end_with_headers,
            now,
            probe,
            Some(slot),
        ) else {
            drop(state);
            cluster.give_back(&endpoint, probe);
            return None;
        };
        if let Some(half) = state.half_mut(upstream_stream) {
            half.credited_before = attempt.credited;
        }
        let chunks = attempt.data.len();
        for (i, chunk) in attempt.data.iter().enumerate() {
            state.send_data(
                upstream_stream,
                chunk.clone(),
                attempt.ended && i + 1 == chunks,
                &mut credits,
            );
        }
        drop(state);
        for credit in credits {
            credit.side.lock().credit(credit.stream, credit.bytes);
        }
        wakes.add(&upstream);
        Some((upstream, upstream_stream, endpoint))
    }

    /// Ends the connection gracefully: a GOAWAY naming the last call taken;
    /// calls in flight finish, then the connection closes.
    fn go_away(&mut self, side: &Arc<Side>, why: &'static str) {
        tracing::debug!(why, "ending an HTTP/2 connection (relay)");
        let mut state = side.lock();
        frame::write_goaway(&mut state.out, self.last_opened, Reason::NO_ERROR, b"");
        state.draining = true;
    }
}

impl Handler for ClientHandler {
    fn headers(
        &mut self,
        side: &Arc<Side>,
        stream: u32,
        end_stream: bool,
        fields: &Fields,
        wakes: &mut Wakes,
    ) -> Result<(), FrameError> {
        if !conn::request_headers(side, stream, end_stream, fields, &mut self.last_opened, wakes)? {
            return Ok(());
        }
        {
            let mut state = side.lock();
            if state.draining || state.stream_count() >= self.max_streams as usize {
                frame::write_rst_stream(&mut state.out, stream, Reason::REFUSED_STREAM);
                drop(state);
                wakes.add(side);
                return Ok(());
            }
        }
        self.open(side, stream, end_stream, fields, wakes);
        Ok(())
    }

    fn oversized_headers(&mut self, side: &Arc<Side>, stream: u32, wakes: &mut Wakes) {
        let status = Status::new(Code::ResourceExhausted, "request headers over the header-list limit");
        if let Some(half) = side.lock().fail(stream, &status) {
            half.peer.lock().reset(half.peer_stream, Reason::CANCEL);
            wakes.add(&half.peer);
        } else {
            self.last_opened = self.last_opened.max(stream);
            side.lock().respond(stream, &status, false);
        }
        wakes.add(side);
    }

    fn goaway(&mut self, side: &Arc<Side>, _last_stream: u32, _reason: Reason, _wakes: &mut Wakes) {
        // The client opens no more streams; the ones open finish.
        side.lock().draining = true;
    }

    fn lost(&self) -> Status {
        Status::new(Code::Cancelled, "the client's connection closed")
    }

    /// Ends calls whose deadline passed: the client hears
    /// DEADLINE_EXCEEDED, the backend's stream is cancelled.
    fn reset_by_peer(&mut self, side: &Arc<Side>, half: &Half) {
        let Some((opened, declared)) = half.opened else {
            return;
        };
        if half.end_sent
            || !is_early_reset(
                crate::turn::now().saturating_duration_since(opened),
                self.limits.premature_reset_min_lifetime,
                declared,
            )
        {
            return;
        }
        self.early_resets += 1;
        if !ending(side) && too_many(self.early_resets, self.accepted, self.limits.premature_reset_streams) {
            tracing::warn!(
                client = ?self.info.remote,
                early_resets = self.early_resets,
                streams = self.accepted,
                "closing a client connection that reset most of its streams early (rapid reset)"
            );
            self.gateway.note_premature_reset_close();
            let mut state = side.lock();
            frame::write_goaway(
                &mut state.out,
                self.last_opened,
                Reason::ENHANCE_YOUR_CALM,
                b"too many resets",
            );
            let halves = state.close();
            drop(state);
            let status = Status::new(Code::Cancelled, "the client's connection was closed (rapid reset)");
            for (_, half) in halves {
                half.peer.lock().fail(half.peer_stream, &status);
                half.peer.wake();
            }
        }
    }

    fn poll_timers(&mut self, side: &Arc<Side>, cx: &mut Context<'_>, wakes: &mut Wakes) -> bool {
        if !ending(side) {
            if self.stopping.as_mut().poll(cx).is_ready() {
                self.go_away(side, "shutting down");
                wakes.add(side);
                return true;
            }
            if self.retire.as_mut().poll(cx).is_ready() {
                self.go_away(side, "max_connection_age reached");
                wakes.add(side);
                return true;
            }
            while self.idle_check.poll_tick(cx).is_ready() {
                let idle = side.lock().stream_count() == 0;
                if idle && self.idle_at_check && self.accepted == self.accepted_at_check {
                    self.go_away(side, "idle_timeout reached");
                    wakes.add(side);
                    return true;
                }
                self.accepted_at_check = self.accepted;
                self.idle_at_check = idle;
            }
        }
        let (refused, next) = {
            let mut state = side.lock();
            (state.take_refused(), state.next_deadline())
        };
        let resent = !refused.is_empty();
        for stream in refused {
            self.resend(side, stream, wakes);
        }
        let Some(next) = next else {
            self.armed = None;
            return resent;
        };
        if self.armed != Some(next) {
            self.timer.as_mut().reset(next);
            self.armed = Some(next);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return resent;
        }
        self.armed = None;
        let expired = side.lock().expired(crate::turn::now());
        for (stream, expiry) in expired {
            let (status, outcome) = match expiry {
                Expiry::Deadline { from_client: true } => (
                    Status::new(Code::DeadlineExceeded, "deadline exceeded (the client's grpc-timeout)"),
                    Outcome::Neutral,
                ),
                Expiry::Deadline { from_client: false } => (
                    Status::new(Code::DeadlineExceeded, "deadline exceeded (the route's timeout)"),
                    Outcome::Failure,
                ),
                Expiry::Idle(limit) => (
                    Status::new(
                        Code::DeadlineExceeded,
                        format!("stream idle for {limit:?} (the route's stream_idle_timeout)"),
                    ),
                    Outcome::Neutral,
                ),
            };
            let half = side.lock().fail(stream, &status);
            if let Some(half) = half {
                let mut upstream = half.peer.lock();
                if let Some(leg) = upstream.half_mut(half.peer_stream) {
                    leg.outcome = outcome;
                    leg.code = Some(Code::DeadlineExceeded);
                }
                upstream.reset(half.peer_stream, Reason::CANCEL);
                drop(upstream);
                wakes.add(&half.peer);
            }
        }
        wakes.add(side);
        true
    }
}

/// Whether the connection takes no new calls: a GOAWAY went either way,
/// or it is closed.
fn ending(side: &Side) -> bool {
    let state = side.lock();
    state.draining || state.is_closed()
}

/// The client's headers as the backend gets them: without fields that
/// belong to one hop, with `x-forwarded-for` and `x-forwarded-proto`, and
/// `traceparent` naming the gateway's span.
fn forwarded_fields(
    out: &mut Fields,
    info: &ConnInfo,
    fields: &Fields,
    remaining: Option<Duration>,
    trace: Option<&TraceContext>,
) {
    out.clear();
    let client = info.forwarded_for.as_ref().map(|v| v.as_bytes());
    let mut had_forwarded_for = false;
    for (name, value) in fields.iter() {
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding" | b"upgrade"
            | b"x-forwarded-proto" | b"grpc-timeout" | b"traceparent" => {}
            b"te" if value != b"trailers" => {}
            b"x-forwarded-for" => {
                had_forwarded_for = true;
                match client {
                    Some(client) => out.push(name, &[value, b", ", client].concat()),
                    None => out.push(name, value),
                }
            }
            _ => out.push(name, value),
        }
    }
    if let (false, Some(client)) = (had_forwarded_for, client) {
        out.push(b"x-forwarded-for", client);
    }
    out.push(b"x-forwarded-proto", info.scheme.as_bytes());
    if let Some(remaining) = remaining {
        let mut text = crate::grpc_timeout::Text::default();
        out.push(b"grpc-timeout", text.encode(remaining));
    }
    if let Some(trace) = trace {
        out.push(b"traceparent", &trace::upstream_traceparent(trace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(fields: &[(&str, &str)], trace: Option<&TraceContext>) -> Vec<(String, String)> {
        let mut client = Fields::default();
        for (name, value) in fields {
            client.push(name.as_bytes(), value.as_bytes());
        }
        let info = ConnInfo::new(Some("192.0.2.7:4000".parse().unwrap()), false);
        let mut out = Fields::default();
        forwarded_fields(&mut out, &info, &client, Some(Duration::from_millis(250)), trace);
        out.iter()
            .map(|(n, v)| (String::from_utf8_lossy(n).into(), String::from_utf8_lossy(v).into()))
            .collect()
    }

    #[test]
    fn the_backend_gets_the_gateways_span_as_parent_and_no_hop_fields() {
        let client_parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let trace = trace::continued_from(client_parent.as_bytes()).unwrap();
        let out = forwarded(
            &[
                (":path", "/a.B/C"),
                ("traceparent", client_parent),
                ("tracestate", "vendor=x"),
                ("grpc-timeout", "1S"),
                ("connection", "close"),
                ("te", "trailers"),
            ],
            Some(&trace),
        );
        let get = |name: &str| {
            out.iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        let traceparent = get("traceparent");
        assert_eq!(traceparent.len(), 1, "{out:?}");
        assert!(traceparent[0].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_ne!(
            &traceparent[0][36..52],
            "00f067aa0ba902b7",
            "the gateway's span is the parent"
        );
        assert!(traceparent[0].ends_with("-01"));
        assert_eq!(get("tracestate"), ["vendor=x"]);
        let timeout = get("grpc-timeout");
        assert_eq!(timeout.len(), 1, "{out:?}");
        assert_eq!(
            crate::grpc_timeout::parse(timeout[0].as_bytes()).ok(),
            Some(Duration::from_millis(250)),
            "the time left, not the client's"
        );
        assert_eq!(get("connection"), Vec::<&str>::new());
        assert_eq!(get("te"), ["trailers"]);
        assert_eq!(get("x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(get("x-forwarded-proto"), ["http"]);
    }

    #[test]
    fn an_invalid_traceparent_is_not_passed_on() {
        let invalid = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        assert!(trace::continued_from(invalid.as_bytes()).is_none());
        let out = forwarded(&[(":path", "/a.B/C"), ("traceparent", invalid)], None);
        assert!(out.iter().all(|(n, _)| n != "traceparent"), "{out:?}");
    }
}
