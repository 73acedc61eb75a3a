//! The HTTP/2 connection pool of one endpoint.
//!
//! Connections open lazily, only when every open connection is at its
//! stream cap (our `max_streams_per_connection` or the server's
//! `MAX_CONCURRENT_STREAMS`, whichever is lower), up to
//! `max_connections_per_endpoint`: one at a time, unless more calls wait
//! than the connections being opened will carry (a burst on a cold pool).
//! A call takes a stream *slot*; waiting calls are woken when a slot frees
//! or a connection opens or fails.
//!
//! A connection is *retired* — removed from the pool so it takes no new
//! calls, while its calls finish — when it reaches its age or request limit,
//! when the server sends GOAWAY, or when it sat idle too long. It closes once
//! it has no call left. Nothing here ever cuts a call that is in flight,
//! except a keepalive PING that goes unanswered (the connection is dead).
//!
//! With the HTTP/2 frame relay on, the pool holds two kinds of connection,
//! counted and capped together (`ConnKind`): relay connections
//! (`relay::upstream`), on which relayed calls take slots without waiting,
//! and plain ones, which the h2 path's client speaks to directly (it
//! reaches a relay connection through the relay's in-process bridge).
//!
//! This module owns sockets and HTTP/2 state; it knows nothing of routes,
//! balancing or gRPC.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};

use super::clock::Clock;
use super::goaway_watch::LastGoAway;
use super::limits::{Limits, Overflow};
use super::transport::{self, Handshake, Transport};
use crate::relay::upstream::RelayLink;

/// Pool and connection settings, from `upstreams.*.pool`, `http2` and `limits`.
#[derive(Clone, Debug)]
pub(crate) struct PoolSettings {
    pub(crate) max_connections: u32,
    pub(crate) max_streams: u32,
    pub(crate) max_requests: u64,
    pub(crate) max_age: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) pending_timeout: Duration,
    pub(crate) stream_window: u32,
    pub(crate) connection_window: u32,
    pub(crate) keepalive_interval: Duration,
    pub(crate) keepalive_timeout: Duration,
    /// TLS towards the endpoints, when configured.
    pub(crate) tls: Option<crate::tls::ClientTls>,
}

impl PoolSettings {
    pub(crate) fn from_config(upstream: &crate::config::Upstream, tls: Option<crate::tls::ClientTls>) -> Self {
        let window = |size: crate::config::ByteSize| u32::try_from(size.bytes()).unwrap_or(u32::MAX >> 1);
        Self {
            max_connections: upstream.pool.max_connections_per_endpoint,
            max_streams: upstream.pool.max_streams_per_connection,
            max_requests: upstream.pool.max_requests_per_connection,
            max_age: upstream.pool.max_connection_age.get(),
            idle_timeout: upstream.pool.idle_timeout.get(),
            connect_timeout: upstream.connect_timeout.get(),
            pending_timeout: upstream.limits.pending_timeout.get(),
            stream_window: window(upstream.http2.initial_stream_window),
            connection_window: window(upstream.http2.initial_connection_window),
            keepalive_interval: upstream.http2.keepalive_interval.get(),
            keepalive_timeout: upstream.http2.keepalive_timeout.get(),
            tls,
        }
    }
}

/// Why a call could not get a stream slot.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum PoolError {
    /// Connecting failed (refused, timed out, handshake failed).
    #[error("connect to {target} failed: {reason}")]
    Connect { target: Arc<str>, reason: String },
    /// Every slot stayed busy for `pending_timeout` (or the call's deadline came first).
    #[error("no stream slot to {target} became free within {waited:?}")]
    PendingTimeout { target: Arc<str>, waited: Duration },
    /// Too many calls were already waiting (`limits.max_pending`).
    #[error("too many calls waiting for {target}")]
    Overflow { target: Arc<str>, overflow: Overflow },
    /// The endpoint left the cluster (discovery dropped it) while the call
    /// waited: no connection will open, so the call goes elsewhere at once.
    #[error("{target} was removed from the upstream")]
    Closed { target: Arc<str> },
}

/// What a new connection is for (with the relay on; without it, every
/// connection is plain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnKind {
    /// Relayed calls' streams, and the h2 path's through the bridge.
    Relay,
    /// The h2 path's calls, straight from its HTTP/2 client.
    Plain,
}

/// Connect back-off after failures: 250 ms doubling to 30 s, ±20% jitter.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The connections of one endpoint.
pub(crate) struct Pool {
    target: Arc<str>,
    settings: Arc<PoolSettings>,
    clock: Clock,
    conns: ArcSwap<Vec<Arc<Conn>>>,
    /// Connects under way.
    connecting: AtomicU32,
    /// Woken when a slot frees, a connection opens, fails or closes.
    changed: Notify,
    waiting: AtomicU32,
    /// Bumped on every failed connect, so waiters can tell that theirs failed.
    connect_failures: AtomicU64,
    consecutive_failures: AtomicU32,
    backoff_until_nanos: AtomicU64,
    last_error: Mutex<Option<String>>,
    next_conn_id: AtomicU64,
    closed: AtomicBool,
    /// Connections the server closed with `GOAWAY(ENHANCE_YOUR_CALM)`.
    refused_our_traffic: AtomicU64,
    /// The endpoint this pool serves (set once it exists), for the relay's
    /// connections, which count their calls on it.
    endpoint: OnceLock<Weak<super::Endpoint>>,
    /// Asks discovery to resolve again soon (connect failure, GOAWAY).
    refresh: Option<Arc<Notify>>,
}

impl Pool {
    pub(crate) fn new(
        target: Arc<str>,
        settings: Arc<PoolSettings>,
        clock: Clock,
        refresh: Option<Arc<Notify>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            target,
            settings,
            clock,
            conns: ArcSwap::from_pointee(Vec::new()),
            connecting: AtomicU32::new(0),
            changed: Notify::new(),
            waiting: AtomicU32::new(0),
            connect_failures: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            backoff_until_nanos: AtomicU64::new(0),
            last_error: Mutex::new(None),
            next_conn_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            refused_our_traffic: AtomicU64::new(0),
            endpoint: OnceLock::new(),
            refresh,
        })
    }

    /// Whether connecting failed recently and the back-off has not yet run out.
    pub(crate) fn in_backoff(&self, now_nanos: u64) -> bool {
        self.backoff_until_nanos.load(Ordering::Relaxed) > now_nanos
    }

    /// The last connect error, for introspection and error messages.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Names the endpoint this pool serves.
    pub(crate) fn set_endpoint(&self, endpoint: Weak<super::Endpoint>) {
        let _ = self.endpoint.set(endpoint);
    }

    fn max_connections(&self) -> usize {
        self.settings.max_connections as usize
    }

    /// Connections the server closed with `GOAWAY(ENHANCE_YOUR_CALM)` since start-up.
    pub(crate) fn refused_our_traffic(&self) -> u64 {
        self.refused_our_traffic.load(Ordering::Relaxed)
    }

    /// Open connections and the calls on each.
    pub(crate) fn connection_loads(&self) -> Vec<u32> {
        self.conns
            .load()
            .iter()
            .map(|c| c.in_flight.load(Ordering::Relaxed))
            .collect()
    }

    /// Stops using every connection: they close once their calls finish.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for conn in self.conns.swap(Arc::new(Vec::new())).iter() {
            conn.retire();
        }
        self.changed.notify_waiters();
    }

    /// Takes a stream slot, connecting if needed; waits at most
    /// `pending_timeout` (or until `deadline`) for one to free up. `kind`
    /// is the connection the call is best carried on (see `try_acquire`).
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        deadline: Option<Instant>,
        limits: &Arc<Limits>,
        kind: ConnKind,
    ) -> Result<Slot, PoolError> {
        if let Some(slot) = self.try_acquire(kind) {
            return Ok(slot);
        }
        let _waiting = limits.wait().map_err(|overflow| PoolError::Overflow {
            target: self.target.clone(),
            overflow,
        })?;
        let failures_at_start = self.connect_failures.load(Ordering::Acquire);
        let started = Instant::now();
        let mut wait_until = started + self.settings.pending_timeout;
        if let Some(deadline) = deadline {
            wait_until = wait_until.min(deadline);
        }
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(slot) = self.try_acquire(kind) {
                return Ok(slot);
            }
            if self.connect_failures.load(Ordering::Acquire) != failures_at_start {
                return Err(self.connect_error());
            }
            if self.closed.load(Ordering::Relaxed) {
                return Err(PoolError::Closed {
                    target: self.target.clone(),
                });
            }
            if self.conns.load().len() < self.max_connections() {
                if self.in_backoff(self.clock.now_nanos()) && self.conns.load().is_empty() {
                    return Err(self.connect_error());
                }
                self.start_connect(kind);
            }
            self.waiting.fetch_add(1, Ordering::Relaxed);
            let woke = timeout_at_instant(wait_until, notified).await;
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            if !woke {
                return Err(PoolError::PendingTimeout {
                    target: self.target.clone(),
                    waited: started.elapsed(),
                });
            }
        }
    }

    fn connect_error(&self) -> PoolError {
        PoolError::Connect {
            target: self.target.clone(),
            reason: self.last_error().unwrap_or_else(|| "connection failed".into()),
        }
    }

    /// A free slot on an open relay connection, and the connection's side
    /// to open the stream on. `None` when every one is full, or none is
    /// open: the pool then starts connecting if it may grow (the call takes
    /// the h2 path, which waits for a slot; later calls find the new
    /// connection).
    pub(crate) fn try_acquire_relay(self: &Arc<Self>) -> Option<(Slot, Arc<crate::relay::Side>)> {
        let Some(slot) = self.try_acquire_where(|conn| conn.relay.is_some()) else {
            self.grow(ConnKind::Relay);
            return None;
        };
        let side = slot.conn.relay.as_ref()?.side.clone();
        Some((slot, side))
    }

    /// A free slot on an open connection for the h2 path, if there is one.
    ///
    /// With the relay on, the pool holds two kinds of connection, counted
    /// and capped together: relay connections, and plain HTTP/2 ones that
    /// the h2 path's client speaks to the backend directly. The h2 path
    /// reaches a relay connection's backend only through the relay's
    /// in-process bridge, one more HTTP/2 hop, so:
    /// - REST and gRPC-Web calls (`kind` plain) take a plain connection's
    ///   slot; failing that, a relay connection's, and the pool opens a
    ///   plain connection, if it may grow, for the calls after this one;
    /// - native gRPC calls (`kind` relay), which the relay handed on, take
    ///   any free slot: most wait for a relay connection that is opening or
    ///   full, and a plain connection opened for them would then sit idle.
    fn try_acquire(self: &Arc<Self>, kind: ConnKind) -> Option<Slot> {
        if !crate::relay::enabled() || kind == ConnKind::Relay {
            return self.try_acquire_where(|_| true);
        }
        if let Some(slot) = self.try_acquire_where(|conn| conn.relay.is_none()) {
            return Some(slot);
        }
        let bridged = self.try_acquire_where(|conn| conn.relay.is_some())?;
        self.grow(ConnKind::Plain);
        Some(bridged)
    }

    /// Starts a connection of `kind` if the pool may grow and is not
    /// backing off after failures.
    fn grow(self: &Arc<Self>, kind: ConnKind) {
        if self.conns.load().len() < self.max_connections() && !self.in_backoff(self.clock.now_nanos()) {
            self.start_connect(kind);
        }
    }

    fn try_acquire_where(self: &Arc<Self>, usable: impl Fn(&Conn) -> bool) -> Option<Slot> {
        let conns = self.conns.load();
        for conn in conns.iter().filter(|conn| usable(conn)) {
            if conn.try_reserve(self.settings.max_streams) {
                let calls = conn.calls.fetch_add(1, Ordering::Relaxed) + 1;
                if self.settings.max_requests > 0 && calls >= self.settings.max_requests {
                    // This call is its last: retire it now so no other call lands on it.
                    self.retire(conn);
                }
                return Some(Slot {
                    conn: conn.clone(),
                    pool: self.clone(),
                });
            }
        }
        None
    }

    /// Removes a connection from the pool; it closes when its calls are done.
    pub(crate) fn retire(&self, conn: &Arc<Conn>) {
        if conn.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        self.ask_for_refresh();
        self.conns
            .rcu(|conns| conns.iter().filter(|c| c.id != conn.id).cloned().collect::<Vec<_>>());
        conn.drained.notify_one();
        self.changed.notify_waiters();
    }

    /// Starts a connect, unless the connections open and opening fill the
    /// pool, or one is opening already and will carry every waiting call. A
    /// burst of calls on a cold pool (thousands of streams opened at once)
    /// then opens several connections at once, instead of queueing behind
    /// one connect after another until `max_pending` overflows.
    fn start_connect(self: &Arc<Self>, kind: ConnKind) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        let mut opening = self.connecting.load(Ordering::Acquire);
        loop {
            // Callers checked the count before; a connect that finished since
            // may have filled the pool. A connect adds its connection before
            // it stops counting as opening, and the connections are read
            // after the count: one that just opened may be counted twice
            // (one connect too few), never missed (one too many).
            if self.conns.load().len() + opening as usize >= self.max_connections() {
                return;
            }
            let carried = opening.saturating_mul(self.settings.max_streams.max(1));
            // The caller is about to wait too, or to be handed to the h2 path
            // and wait there.
            let waiting = self.waiting.load(Ordering::Relaxed).saturating_add(1);
            if opening > 0 && waiting <= carried {
                return;
            }
            match self
                .connecting
                .compare_exchange_weak(opening, opening + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => opening = now,
            }
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let endpoint = pool.endpoint.get().cloned().unwrap_or_default();
            let result = timeout(
                pool.settings.connect_timeout,
                connect(&pool.target, &pool.settings, endpoint, kind),
            )
            .await;
            let outcome = match result {
                Ok(Ok(connected)) => Ok(connected),
                Ok(Err(reason)) => Err(reason),
                Err(_) => Err(format!("timed out after {:?}", pool.settings.connect_timeout)),
            };
            match outcome {
                Ok((send, connection, ping, handshake, last_goaway, relay)) => {
                    let conn = Arc::new(Conn::new(
                        pool.next_conn_id.fetch_add(1, Ordering::Relaxed),
                        send,
                        &pool.settings,
                        &pool.clock,
                        handshake,
                        last_goaway,
                        relay,
                    ));
                    pool.conns.rcu(|conns| {
                        let mut next = Vec::clone(conns);
                        next.push(conn.clone());
                        next
                    });
                    pool.consecutive_failures.store(0, Ordering::Relaxed);
                    pool.backoff_until_nanos.store(0, Ordering::Relaxed);
                    pool.connecting.fetch_sub(1, Ordering::Release);
                    pool.changed.notify_waiters();
                    tracing::debug!(target = %pool.target, conn = conn.id, "upstream connection open");
                    let weak = Arc::downgrade(&pool);
                    drop(pool);
                    drive(conn, weak, connection, ping).await;
                }
                Err(reason) => {
                    pool.record_connect_failure(reason);
                    pool.connecting.fetch_sub(1, Ordering::Release);
                    pool.changed.notify_waiters();
                }
            }
        });
    }

    fn record_connect_failure(&self, reason: String) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let exponent = failures.saturating_sub(1).min(16);
        let backoff = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_MAX);
        let jitter = 0.8 + fastrand::f64() * 0.4;
        let until = self.clock.now_nanos() + backoff.mul_f64(jitter).as_nanos() as u64;
        self.backoff_until_nanos.store(until, Ordering::Relaxed);
        tracing::warn!(target = %self.target, error = %reason, failures, "upstream connect failed");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(reason);
        }
        self.connect_failures.fetch_add(1, Ordering::Release);
        self.ask_for_refresh();
    }

    fn ask_for_refresh(&self) {
        if let Some(refresh) = &self.refresh {
            refresh.notify_one();
        }
    }

    fn forget(&self, conn: &Arc<Conn>) {
        self.conns
            .rcu(|conns| conns.iter().filter(|c| c.id != conn.id).cloned().collect::<Vec<_>>());
        self.changed.notify_waiters();
    }
}

async fn timeout_at_instant<F: std::future::Future>(until: Instant, future: F) -> bool {
    tokio::select! {
        _ = future => true,
        _ = sleep_until(until) => false,
    }
}

/// How a connection ended, for the calls that were lost with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectionEnd {
    /// The server closed it with `GOAWAY(ENHANCE_YOUR_CALM)`: it judged the
    /// traffic on it abusive. A backend that was frozen for a moment (a GC
    /// pause, CPU throttling) and then reads a burst of streams that the
    /// gateway already cancelled for its clients says exactly this; it is a
    /// verdict on the gateway's traffic, not a failure of the backend.
    RefusedOurTraffic,
    /// A keepalive PING went unanswered this long: the backend (or the
    /// network to it) stopped answering, and the gateway closed it.
    KeepaliveUnanswered(Duration),
    /// Anything else: closed, reset, broken, or retired.
    Other,
}

impl ConnectionEnd {
    /// What a call lost with the connection hears, when the end says more
    /// than the error the call saw.
    pub(crate) fn lost_call_status(self, target: &str) -> Option<crate::status::Status> {
        let message = match self {
            ConnectionEnd::RefusedOurTraffic => super::calm_message(target),
            ConnectionEnd::KeepaliveUnanswered(waited) => keepalive_message(target, waited),
            ConnectionEnd::Other => return None,
        };
        Some(crate::status::Status::new(crate::status::Code::Unavailable, message))
    }
}

/// What a call lost with a connection whose keepalive PING went unanswered hears.
pub(crate) fn keepalive_message(target: &str, waited: Duration) -> String {
    format!("upstream {target} keepalive ping unanswered for {waited:?}: the connection is presumed dead")
}

/// One HTTP/2 connection to the endpoint.
pub(crate) struct Conn {
    pub(crate) id: u64,
    send: h2::client::SendRequest<Bytes>,
    in_flight: AtomicU32,
    calls: AtomicU64,
    /// The server's MAX_CONCURRENT_STREAMS, refreshed by the connection task.
    peer_max_streams: AtomicU32,
    draining: AtomicBool,
    /// Woken when a draining connection's last call ends.
    drained: Notify,
    retire_at: Instant,
    /// When the last call ended (pool clock), for the idle timeout.
    last_active_nanos: AtomicU64,
    /// What its TLS handshake used (generation 0: plaintext).
    tls: Handshake,
    /// How it ended, once it has; `ended` wakes those waiting to know.
    end: OnceLock<ConnectionEnd>,
    ended: Notify,
    /// The last GOAWAY code its transport saw.
    last_goaway: LastGoAway,
    /// With the relay on: the relay connection under this one, which
    /// relayed calls use too (each holding a slot here).
    relay: Option<RelayLink>,
}

impl Conn {
    fn new(
        id: u64,
        send: h2::client::SendRequest<Bytes>,
        settings: &PoolSettings,
        clock: &Clock,
        tls: Handshake,
        last_goaway: LastGoAway,
        relay: Option<RelayLink>,
    ) -> Self {
        // ±10% jitter so connections opened together do not all retire together.
        let age = settings.max_age.mul_f64(0.9 + fastrand::f64() * 0.2);
        let peer_max = u32::try_from(send.current_max_send_streams()).unwrap_or(u32::MAX);
        Self {
            id,
            send,
            in_flight: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            peer_max_streams: AtomicU32::new(peer_max),
            draining: AtomicBool::new(false),
            drained: Notify::new(),
            retire_at: Instant::now() + age,
            last_active_nanos: AtomicU64::new(clock.now_nanos()),
            tls,
            end: OnceLock::new(),
            ended: Notify::new(),
            last_goaway,
            relay,
        }
    }

    fn try_reserve(&self, our_max: u32) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        // Over the relay, the backend's own limit (the h2 client sees the
        // bridge's).
        let peer_max = match &self.relay {
            Some(relay) => &relay.peer_max_streams,
            None => &self.peer_max_streams,
        };
        let cap = our_max.min(peer_max.load(Ordering::Relaxed));
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < cap).then_some(n + 1))
            .is_ok()
    }

    fn retire(&self) {
        self.draining.store(true, Ordering::Release);
        self.drained.notify_one();
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the backend sent GOAWAY(ENHANCE_YOUR_CALM) on this
    /// connection: seen by its transport, or over a relay connection by the
    /// relay itself (before it passes the GOAWAY on to the bridge). Known
    /// as soon as it arrives, before the connection's task records why it
    /// ended — which a call that lost its stream may ask first.
    fn saw_calm(&self) -> bool {
        self.last_goaway.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)
            || self
                .relay
                .as_ref()
                .is_some_and(|relay| relay.side.lock().refused_our_traffic)
    }
}

/// A reserved stream on a connection; released when dropped.
pub(crate) struct Slot {
    conn: Arc<Conn>,
    pool: Arc<Pool>,
}

impl Slot {
    /// Opens the HTTP/2 stream. An error here means the request was not sent.
    pub(crate) fn send_request(
        &self,
        head: http::Request<()>,
        end_of_stream: bool,
    ) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), h2::Error> {
        let mut send = self.conn.send.clone();
        send.send_request(head, end_of_stream)
    }

    /// Takes this connection out of the pool (it received GOAWAY or failed).
    pub(crate) fn retire_connection(&self) {
        self.pool.retire(&self.conn);
    }

    /// How the connection ended, if it has.
    pub(crate) fn connection_end(&self) -> Option<ConnectionEnd> {
        let recorded = self.conn.end.get().copied();
        match recorded {
            // Not ended yet, or retired (say, by the call that saw its
            // stream fail) before its task recorded why.
            None | Some(ConnectionEnd::Other) if self.conn.saw_calm() => Some(ConnectionEnd::RefusedOurTraffic),
            _ => recorded,
        }
    }

    /// How the connection ended, waiting at most `limit` for it to end. A
    /// call sees its stream fail a moment before the connection's task
    /// records why, so a call that lost its connection asks here.
    pub(crate) async fn wait_for_connection_end(&self, limit: Duration) -> Option<ConnectionEnd> {
        let ended = self.conn.ended.notified();
        if let Some(end) = self.connection_end() {
            return Some(end);
        }
        let _ = timeout(limit, ended).await;
        self.connection_end()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 {
            self.conn
                .last_active_nanos
                .store(self.pool.clock.now_nanos(), Ordering::Relaxed);
            if self.conn.is_draining() {
                self.conn.drained.notify_one();
            }
        }
        if self.pool.waiting.load(Ordering::Relaxed) > 0 {
            self.pool.changed.notify_waiters();
        }
    }
}

type Connected = (
    h2::client::SendRequest<Bytes>,
    h2::client::Connection<Transport, Bytes>,
    h2::PingPong,
    Handshake,
    LastGoAway,
    Option<RelayLink>,
);

/// Opens TCP, performs the HTTP/2 handshake and waits for the server's
/// SETTINGS (a PING round trip), so the first calls see its stream limit.
/// With the relay on, the connection is the relay's, and the h2 client
/// speaks to it through the relay's in-process bridge.
async fn connect(
    target: &Arc<str>,
    settings: &PoolSettings,
    endpoint: Weak<super::Endpoint>,
    kind: ConnKind,
) -> Result<Connected, String> {
    let (transport, handshake) = transport::connect(target, settings.tls.as_ref()).await?;
    let (transport, relay) = match kind == ConnKind::Relay && crate::relay::serving() {
        true => {
            let (bridge, link) = crate::relay::upstream::open(transport, target.clone(), endpoint, settings).await?;
            (Transport::bridge(bridge), Some(link))
        }
        false => (transport, None),
    };
    let last_goaway = transport.last_goaway();
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .enable_push(false)
        .max_concurrent_reset_streams(1024)
        .handshake::<_, Bytes>(transport)
        .await
        .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
    let mut ping = connection
        .ping_pong()
        .ok_or_else(|| "HTTP/2 connection gave no ping handle".to_string())?;
    ping.send_ping(h2::Ping::opaque()).map_err(|e| e.to_string())?;
    let pong = poll_fn(|cx| {
        if let Poll::Ready(result) = ping.poll_pong(cx) {
            return Poll::Ready(result.map(|_| ()).map_err(|e| e.to_string()));
        }
        match std::pin::Pin::new(&mut connection).poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Err("the server closed the connection during the handshake".into())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("HTTP/2 handshake failed: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    });
    pong.await?;
    Ok((send, connection, ping, handshake, last_goaway, relay))
}

use std::future::Future;

/// Drives one connection until it closes: the HTTP/2 state machine,
/// keepalive PINGs while calls are active, retirement by age or idleness,
/// and the close once a retired connection has no call left.
async fn drive(
    conn: Arc<Conn>,
    pool: Weak<Pool>,
    mut connection: h2::client::Connection<Transport, Bytes>,
    mut ping: h2::PingPong,
) {
    let Some(settings) = pool.upgrade().map(|p| p.settings.clone()) else {
        return;
    };
    let tick_every = settings.keepalive_interval.min(Duration::from_secs(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ping = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    let retire_at = sleep_until(conn.retire_at);
    tokio::pin!(retire_at);
    // When a newer client certificate is loaded, this connection (made with
    // the old one) is retired at a random moment within the drain window —
    // at once if the old certificate is about to expire.
    let mut rotation_deadline: Option<Instant> = None;
    let mut end = ConnectionEnd::Other;
    let reason: String = loop {
        tokio::select! {
            result = &mut connection => {
                // Read from the transport, not from `result`: a GOAWAY
                // followed by a TCP reset (the server closed with our
                // requests unread) ends in the I/O error, and the transport
                // saw the GOAWAY all the same.
                if conn.saw_calm() {
                    end = ConnectionEnd::RefusedOurTraffic;
                }
                break match result {
                    Ok(()) => "closed by the server".into(),
                    Err(e) => format!("connection error: {e}"),
                };
            }
            _ = &mut retire_at, if !conn.is_draining() => {
                if let Some(pool) = pool.upgrade() {
                    tracing::debug!(target = %pool.target, conn = conn.id, "retiring connection: max_connection_age");
                    pool.retire(&conn);
                }
            }
            _ = conn.drained.notified(), if conn.is_draining() => {
                if conn.in_flight.load(Ordering::Acquire) == 0 {
                    break "retired".into();
                }
            }
            pong = poll_fn(|cx| ping.poll_pong(cx)), if ping_sent.is_some() => {
                ping_sent = None;
                if let Err(e) = pong {
                    break format!("keepalive ping failed: {e}");
                }
            }
            _ = tick.tick() => {
                let Some(pool) = pool.upgrade() else { break "pool closed".into() };
                if let Ok(max) = u32::try_from(conn.send.current_max_send_streams()) {
                    conn.peer_max_streams.store(max, Ordering::Relaxed);
                }
                let now = Instant::now();
                let in_flight = conn.in_flight.load(Ordering::Acquire);
                if let Some(sent) = ping_sent {
                    if now.duration_since(sent) > settings.keepalive_timeout {
                        end = ConnectionEnd::KeepaliveUnanswered(settings.keepalive_timeout);
                        break format!("keepalive ping unanswered for {:?}", settings.keepalive_timeout);
                    }
                } else if in_flight > 0
                    && now.duration_since(last_ping) >= settings.keepalive_interval
                    && ping.send_ping(h2::Ping::opaque()).is_ok()
                {
                    ping_sent = Some(now);
                    last_ping = now;
                }
                if let Some(tls) = &settings.tls
                    && !conn.is_draining()
                    && conn.tls.outdated(tls, &mut rotation_deadline)
                {
                    tracing::info!(target = %pool.target, conn = conn.id, "retiring connection made with a rotated client certificate");
                    pool.retire(&conn);
                }
                let idle_since = pool.clock.instant_at(conn.last_active_nanos.load(Ordering::Relaxed));
                if in_flight == 0 && now.saturating_duration_since(idle_since) >= settings.idle_timeout {
                    pool.retire(&conn);
                    break "idle".into();
                }
                if conn.is_draining() && in_flight == 0 {
                    break "retired".into();
                }
            }
        }
    };
    let _ = conn.end.set(end);
    conn.ended.notify_waiters();
    if let Some(pool) = pool.upgrade() {
        conn.draining.store(true, Ordering::Release);
        pool.forget(&conn);
        if end == ConnectionEnd::RefusedOurTraffic {
            pool.refused_our_traffic.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target = %pool.target,
                conn = conn.id,
                "upstream closed the connection with ENHANCE_YOUR_CALM: it judged the traffic abusive, typically \
                 because it saw many streams cancelled before it accepted them (the backend stalled while clients \
                 cancelled or their deadlines ran out); the calls lost with it are not counted against the endpoint"
            );
        } else {
            tracing::debug!(target = %pool.target, conn = conn.id, %reason, "upstream connection closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_connections: u32, pending_timeout: Duration) -> Arc<PoolSettings> {
        Arc::new(PoolSettings {
            max_connections,
            max_streams: 100,
            max_requests: 0,
            max_age: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(1),
            pending_timeout,
            stream_window: 1 << 20,
            connection_window: 1 << 20,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            tls: None,
        })
    }

    /// An HTTP/2 server that counts the connections it accepts and answers
    /// each `delay` after accepting it.
    async fn counting_h2_server(delay: Duration) -> (std::net::SocketAddr, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        tokio::spawn({
            let accepted = accepted.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Ok(mut conn) = h2::server::handshake(tcp).await {
                            while conn.accept().await.is_some() {}
                        }
                    });
                }
            }
        });
        (addr, accepted)
    }

    /// A caller that saw room for a connection may ask for one after another
    /// connect filled the pool; found under load, where the pool opened five
    /// connections with `max_connections_per_endpoint: 4`.
    #[tokio::test]
    async fn a_late_request_to_connect_does_not_exceed_max_connections() {
        let (addr, accepted) = counting_h2_server(Duration::ZERO).await;
        let pool = Pool::new(
            addr.to_string().into(),
            settings(1, Duration::from_secs(5)),
            Clock::new(),
            None,
        );
        let limits = Limits::new(&crate::config::Limits::default());
        let slot = pool.acquire(None, &limits, ConnKind::Plain).await.unwrap();
        assert_eq!(pool.conns.load().len(), 1);
        // What a caller that read the count before that connection was
        // added goes on to do.
        pool.start_connect(ConnKind::Plain);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pool.conns.load().len(), 1);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "a second connection was opened");
        drop(slot);
    }

    /// A burst of calls on a cold pool opens as many connections at once as
    /// it needs (up to the cap), not one after another.
    #[tokio::test]
    async fn a_burst_on_a_cold_pool_opens_connections_side_by_side() {
        // Slow to answer, so no connect finishes during the burst.
        let (addr, accepted) = counting_h2_server(Duration::from_millis(300)).await;
        let settings = Arc::new(PoolSettings {
            max_connections: 4,
            max_streams: 2,
            ..(*settings(4, Duration::from_secs(5))).clone()
        });
        let pool = Pool::new(addr.to_string().into(), settings, Clock::new(), None);
        let limits = Limits::new(&crate::config::Limits::default());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let (pool, limits) = (pool.clone(), limits.clone());
            calls.spawn(async move { pool.acquire(None, &limits, ConnKind::Plain).await.map(drop) });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // 5 calls at 2 streams a connection: 3 connects, all under way.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for _ in 0..10 {
            let (pool, limits) = (pool.clone(), limits.clone());
            calls.spawn(async move { pool.acquire(None, &limits, ConnKind::Plain).await.map(drop) });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 4, "never more than max_connections");
        let mut served = 0;
        while let Some(call) = calls.join_next().await {
            served += usize::from(call.unwrap().is_ok());
        }
        assert_eq!(served, 15);
    }

    /// A call waiting on an endpoint that discovery then removes must move
    /// on at once, not sit out `pending_timeout` on a pool that will never
    /// connect again.
    #[tokio::test]
    async fn a_waiting_call_leaves_a_closed_pool_at_once() {
        // No connection may open (max 0), so the call can only wait.
        let pool = Pool::new(
            "127.0.0.1:9".into(),
            settings(0, Duration::from_secs(30)),
            Clock::new(),
            None,
        );
        let limits = Limits::new(&crate::config::Limits::default());
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.acquire(None, &limits, ConnKind::Plain).await.err() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "the call should wait while the pool is open");
        pool.close();
        let error = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiting call should end when the pool closes, not after pending_timeout")
            .unwrap();
        assert!(matches!(error, Some(PoolError::Closed { .. })), "{error:?}");

        // And a call arriving after the close fails at once too.
        let limits = Limits::new(&crate::config::Limits::default());
        let late = tokio::time::timeout(Duration::from_secs(5), pool.acquire(None, &limits, ConnKind::Plain)).await;
        let late = late.map(Result::err);
        assert!(matches!(late, Ok(Some(PoolError::Closed { .. }))), "{late:?}");
    }
}
