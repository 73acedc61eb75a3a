//! Relay connections to one backend endpoint: which connection a new call
//! opens its stream on, opening connections (lazily, in the background, so
//! a call never waits for a connect while holding up other calls), and the
//! role of an upstream connection — a backend's answers go to the client
//! leg of their call, and a backend's GOAWAY fails the calls it never took.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Context;
use std::time::Duration;

use tokio::time::Instant;

use h2::Reason;

use super::conn::{self, Handler, ReadLimits, Wakes};
use super::frame::{self, FrameError, Settings};
use super::side::{Fields, Role, Side, Windows};
use crate::status::{Code, Status};
use crate::upstream::{Endpoint, Outcome, PoolSettings};

/// The payload of the relay's keepalive PINGs.
const KEEPALIVE: [u8; 8] = *b"grpcedge";

/// Header-list limit for what backends send: generous, as backends are trusted
/// more than clients, but bounded.
const UPSTREAM_MAX_HEADER_LIST: u32 = 1 << 20;

/// An endpoint's relay connections.
#[derive(Default)]
pub(crate) struct RelayPool {
    connections: Mutex<Vec<Arc<Connection>>>,
}

struct Connection {
    side: Arc<Side>,
    /// The backend's SETTINGS_MAX_CONCURRENT_STREAMS, capped by the pool's
    /// `max_streams_per_connection`.
    max_streams: AtomicU32,
    /// The backend's first SETTINGS arrived: the connection is up.
    ready: AtomicBool,
    endpoint: std::sync::Weak<Endpoint>,
}

impl Connection {
    fn endpoint_pool_note_refusal(&self) {
        if let Some(endpoint) = self.endpoint.upgrade() {
            endpoint.pool.note_refused_our_traffic();
        }
    }
}

impl RelayPool {
    /// The connection a new call opens its stream on: the first one up with
    /// a free stream. `None` while no connection is up with room: the pool
    /// then starts one in the background if it may grow, and the call takes
    /// the h2 path, which waits for connections and streams and tries other
    /// endpoints when connecting fails.
    pub(crate) fn side_for_call(&self, endpoint: &Arc<Endpoint>, settings: &PoolSettings) -> Option<Arc<Side>> {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let mut starting = false;
        let mut chosen = None;
        // One look at each connection: those closed or draining leave the
        // pool (they take no new calls); the first one up with room is used.
        connections.retain(|connection| {
            let state = connection.side.lock();
            if state.is_closed() || state.draining {
                return false;
            }
            if !connection.ready.load(Ordering::Acquire) {
                starting = true;
            } else if chosen.is_none() && state.stream_count() < connection.max_streams.load(Ordering::Relaxed) as usize
            {
                chosen = Some(connection.side.clone());
            }
            true
        });
        if chosen.is_some() {
            return chosen;
        }
        // `max_connections_per_endpoint` caps the h2 path's connections and
        // these together: the backend sees one client.
        if connections.len() + endpoint.pool.connection_count() >= settings.max_connections.max(1) as usize {
            // Every connection is full: the h2 path makes the call wait for
            // a stream (up to `max_pending`), which the relay does not.
            return None;
        }
        if !starting {
            connections.push(open(endpoint, settings));
        }
        None
    }

    /// Calls in flight on each relay connection that is up (closed ones
    /// leave the pool here too).
    pub(crate) fn connection_loads(&self) -> Vec<u32> {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let mut loads = Vec::with_capacity(connections.len());
        connections.retain(|connection| {
            let state = connection.side.lock();
            if state.is_closed() {
                return false;
            }
            if connection.ready.load(Ordering::Acquire) {
                loads.push(u32::try_from(state.stream_count()).unwrap_or(u32::MAX));
            }
            true
        });
        loads
    }

    /// Closes every connection (the endpoint is gone).
    pub(crate) fn close(&self) {
        let connections = std::mem::take(&mut *self.connections.lock().unwrap_or_else(|p| p.into_inner()));
        for connection in connections {
            let mut state = connection.side.lock();
            frame::write_goaway(&mut state.out, 0, Reason::NO_ERROR, b"");
            state.draining = true;
            drop(state);
            connection.side.wake();
        }
    }
}

/// Starts a connection: its side takes calls at once (their frames wait in
/// its output), while a task connects and then drives it.
fn open(endpoint: &Arc<Endpoint>, settings: &PoolSettings) -> Arc<Connection> {
    let windows = Windows {
        stream: settings.stream_window,
        connection: settings.connection_window,
    };
    let side = Side::opening(
        Role::Upstream,
        windows,
        Arc::downgrade(endpoint),
        upstream_settings(windows),
    );
    let connection = Arc::new(Connection {
        side: side.clone(),
        max_streams: AtomicU32::new(settings.max_streams.max(1)),
        ready: AtomicBool::new(false),
        endpoint: Arc::downgrade(endpoint),
    });
    endpoint.pool.relay_connection_opened();
    // The task keeps its endpoint alive: one that discovery removed stays
    // listed as draining while its calls finish here.
    let counted = endpoint.clone();
    let target = endpoint.target.clone();
    let tls = settings.tls.clone();
    let connect_timeout = settings.connect_timeout;
    let mut handler = UpstreamHandler {
        connection: Some(connection.clone()),
        target: target.clone(),
        pool_max_streams: settings.max_streams.max(1),
        lifetime: Some(Lifetime::new(settings)),
        calm: false,
    };
    tokio::spawn(async move {
        let connected = tokio::time::timeout(connect_timeout, crate::upstream::connect(&target, tls.as_ref())).await;
        let transport = match connected {
            Ok(Ok((transport, handshake))) => {
                if let Some(lifetime) = &mut handler.lifetime {
                    lifetime.handshake = handshake;
                }
                Some(transport)
            }
            Ok(Err(error)) => {
                fail_all(&side, &format!("connecting to upstream {target} failed: {error}"));
                None
            }
            Err(_) => {
                fail_all(&side, &format!("connecting to upstream {target} timed out"));
                None
            }
        };
        let limits = ReadLimits {
            max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
            max_header_list_size: UPSTREAM_MAX_HEADER_LIST,
            header_table_size: 4096,
        };
        if let Some(transport) = transport {
            conn::run(transport, side, handler, limits, false).await;
        }
        counted.pool.relay_connection_closed();
    });
    connection
}

/// Fails every call waiting on a connection that never came up.
fn fail_all(side: &Arc<Side>, message: &str) {
    tracing::debug!(%message, "relay upstream connection failed");
    let halves = side.lock().close();
    let status = Status::new(Code::Unavailable, message.to_string());
    for (_, half) in halves {
        half.peer.lock().fail(half.peer_stream, &status);
        half.peer.wake();
    }
}

/// When a pooled connection retires: idle for `idle_timeout`, older than
/// `max_connection_age` (±10%), past `max_requests_per_connection`, or
/// made with a client certificate that has since been replaced.
/// It retires by draining: no new calls, a GOAWAY, closed when its calls end.
/// With calls in flight it is also pinged every `keepalive_interval`, and
/// is dead when a ping goes unanswered for `keepalive_timeout`.
struct Lifetime {
    check: tokio::time::Interval,
    idle_timeout: Duration,
    idle_since: Option<Instant>,
    retire_at: Instant,
    max_requests: u64,
    /// The client certificate the connection was made with, and when it
    /// retires once a newer one is loaded.
    tls: Option<crate::tls::ClientTls>,
    handshake: crate::upstream::Handshake,
    rotation_deadline: Option<Instant>,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
    last_ping: Instant,
    ping_sent: Option<Instant>,
    /// A PING went into the output on this turn.
    pinged: bool,
}

/// What a connection's lifetime calls for.
enum Due {
    /// Retire by draining, for this reason.
    Retire(&'static str),
    /// A keepalive PING went unanswered this long: the connection is dead.
    Dead(Duration),
}

impl Lifetime {
    fn new(settings: &PoolSettings) -> Self {
        let now = Instant::now();
        let every = (settings.idle_timeout / 2)
            .min(settings.keepalive_interval)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        Lifetime {
            check: tokio::time::interval_at(now + every, every),
            idle_timeout: settings.idle_timeout,
            idle_since: None,
            retire_at: now + settings.max_age.mul_f64(0.9 + fastrand::f64() * 0.2),
            max_requests: settings.max_requests,
            tls: settings.tls.clone(),
            handshake: Default::default(),
            rotation_deadline: None,
            keepalive_interval: settings.keepalive_interval,
            keepalive_timeout: settings.keepalive_timeout,
            last_ping: now,
            ping_sent: None,
            pinged: false,
        }
    }

    /// What the connection should do now, if anything.
    fn due(&mut self, side: &Arc<Side>, cx: &mut Context<'_>) -> Option<Due> {
        let mut due = None;
        while self.check.poll_tick(cx).is_ready() {
            let now = Instant::now();
            let mut state = side.lock();
            if state.is_closed() {
                return None;
            }
            let idle = state.stream_count() == 0;
            let opened = u64::from(state.streams_opened());
            if let Some(sent) = self.ping_sent {
                if now - sent > self.keepalive_timeout {
                    return Some(Due::Dead(self.keepalive_timeout));
                }
            } else if !idle && now - self.last_ping >= self.keepalive_interval {
                frame::write_ping(&mut state.out, false, KEEPALIVE);
                self.ping_sent = Some(now);
                self.last_ping = now;
                self.pinged = true;
            }
            let draining = state.draining;
            drop(state);
            if draining {
                continue;
            }
            self.idle_since = match (idle, self.idle_since) {
                (false, _) => None,
                (true, None) => Some(now),
                (true, since) => since,
            };
            if self.idle_since.is_some_and(|since| now - since >= self.idle_timeout) {
                due = Some(Due::Retire("idle"));
            } else if now >= self.retire_at {
                due = Some(Due::Retire("max_connection_age"));
            } else if self.max_requests > 0 && opened >= self.max_requests {
                due = Some(Due::Retire("max_requests_per_connection"));
            } else if let Some(tls) = &self.tls
                && self.handshake.outdated(tls, &mut self.rotation_deadline)
            {
                due = Some(Due::Retire("made with a rotated client certificate"));
            }
        }
        due
    }
}

struct UpstreamHandler {
    /// The pool's entry (none for the in-process fallback connection).
    connection: Option<Arc<Connection>>,
    lifetime: Option<Lifetime>,
    target: Arc<str>,
    pool_max_streams: u32,
    /// The backend said ENHANCE_YOUR_CALM: the calls the connection's end
    /// cuts are told so.
    calm: bool,
}

impl Handler for UpstreamHandler {
    fn headers(
        &mut self,
        side: &Arc<Side>,
        stream: u32,
        end_stream: bool,
        fields: &Fields,
        wakes: &mut Wakes,
    ) -> Result<(), FrameError> {
        let link = {
            let mut state = side.lock();
            let Some(half) = state.half_mut(stream) else {
                // A call that ended on the client's side meanwhile.
                return Ok(());
            };
            if end_stream {
                let code = fields.get(b"grpc-status").map_or(Code::Unknown, code_of);
                half.outcome = Outcome::of_code(code, false);
                half.code = Some(code);
            }
            let link = (half.peer.clone(), half.peer_stream);
            state.answered(stream);
            if end_stream {
                state.received_end(stream);
            }
            link
        };
        let (peer, peer_stream) = link;
        peer.lock().send_headers(peer_stream, fields, end_stream);
        wakes.add(&peer);
        Ok(())
    }

    fn oversized_headers(&mut self, side: &Arc<Side>, stream: u32, wakes: &mut Wakes) {
        let half = side.lock().reset(stream, Reason::CANCEL);
        if let Some(half) = half {
            let status = Status::new(
                Code::Internal,
                format!("upstream {} sent headers over the header-list limit", self.target),
            );
            half.peer.lock().fail(half.peer_stream, &status);
            wakes.add(&half.peer);
        }
        wakes.add(side);
    }

    fn settings(&mut self, settings: &Settings) {
        let Some(connection) = &self.connection else {
            return;
        };
        if let Some(max) = settings.max_concurrent_streams {
            connection
                .max_streams
                .store(max.clamp(1, self.pool_max_streams), Ordering::Relaxed);
        }
        connection.ready.store(true, Ordering::Release);
    }

    fn goaway(&mut self, side: &Arc<Side>, last_stream: u32, reason: Reason, wakes: &mut Wakes) {
        // Streams above the last one were never processed: safe to try
        // again, so the client hears UNAVAILABLE.
        self.calm |= reason == Reason::ENHANCE_YOUR_CALM;
        let refused = {
            let mut state = side.lock();
            state.draining = true;
            if reason == Reason::ENHANCE_YOUR_CALM && !state.refused_our_traffic {
                state.refused_our_traffic = true;
                if let Some(connection) = &self.connection {
                    connection.endpoint_pool_note_refusal();
                }
            }
            state.streams_above(last_stream)
        };
        let status = Status::new(
            Code::Unavailable,
            format!("upstream {} is closing the connection ({reason})", self.target),
        );
        for half in refused {
            half.peer.lock().fail_unprocessed(half.peer_stream, &status);
            wakes.add(&half.peer);
        }
    }

    fn lost(&self) -> Status {
        match self.calm {
            true => Status::new(Code::Unavailable, crate::upstream::calm_message(&self.target)),
            false => Status::new(Code::Unavailable, format!("upstream {} connection lost", self.target)),
        }
    }

    fn pong(&mut self) {
        if let Some(lifetime) = &mut self.lifetime {
            lifetime.ping_sent = None;
        }
    }

    fn poll_timers(&mut self, side: &Arc<Side>, cx: &mut Context<'_>, wakes: &mut Wakes) -> bool {
        let Some(lifetime) = &mut self.lifetime else {
            return false;
        };
        let due = lifetime.due(side, cx);
        let pinged = std::mem::take(&mut lifetime.pinged);
        match due {
            None => pinged,
            Some(Due::Retire(why)) => {
                tracing::debug!(target = %self.target, why, "retiring a relay connection");
                let mut state = side.lock();
                state.draining = true;
                frame::write_goaway(&mut state.out, 0, Reason::NO_ERROR, b"");
                true
            }
            Some(Due::Dead(waited)) => {
                tracing::info!(target = %self.target, ?waited, "relay connection dead: keepalive ping unanswered");
                let halves = side.lock().close();
                let status = Status::new(
                    Code::Unavailable,
                    crate::upstream::keepalive_message(&self.target, waited),
                );
                for (_, half) in halves {
                    half.peer.lock().fail(half.peer_stream, &status);
                    wakes.add(&half.peer);
                }
                true
            }
        }
    }
}

/// Starts the in-process connection a client connection's relay hands the
/// calls it does not carry itself to: the gateway's h2 path serves it,
/// with everything that path does (REST, gRPC-Web, in-process services,
/// waiting for and retrying connections).
pub(crate) fn fallback<F>(serve: impl FnOnce(tokio::io::DuplexStream) -> F, windows: Windows) -> Arc<Side>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (near, far) = tokio::io::duplex(256 << 10);
    tokio::spawn(serve(far));
    let side = Side::opening(
        Role::Upstream,
        windows,
        std::sync::Weak::new(),
        upstream_settings(windows),
    );
    let handler = UpstreamHandler {
        connection: None,
        target: Arc::from("the gateway"),
        pool_max_streams: u32::MAX,
        lifetime: None,
        calm: false,
    };
    let limits = ReadLimits {
        max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
        max_header_list_size: UPSTREAM_MAX_HEADER_LIST,
        header_table_size: 4096,
    };
    tokio::spawn(conn::run(near, side.clone(), handler, limits, false));
    side
}

/// What this end announces to a backend (or the in-process fallback).
fn upstream_settings(windows: Windows) -> Settings {
    Settings {
        enable_push: Some(false),
        initial_window_size: Some(windows.stream),
        max_header_list_size: Some(UPSTREAM_MAX_HEADER_LIST),
        ..Settings::default()
    }
}

fn code_of(value: &[u8]) -> Code {
    std::str::from_utf8(value)
        .ok()
        .and_then(|digits| digits.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32)
}
