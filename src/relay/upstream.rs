//! The relay's connections to backends. Each is opened by the endpoint's
//! pool (`upstream::pool`), which owns it: the pool decides when to open
//! one, how many calls it takes and when it retires, for relayed calls and
//! the h2 path's alike. The pool's h2 client reaches the backend through an
//! in-process *bridge*: its streams are relayed onto the same connection
//! that relayed calls use, so an endpoint has one set of connections.
//!
//! The upstream role: a backend's answers go to the other leg of their
//! call; its GOAWAY fails (or sends elsewhere) the calls it never took and
//! is passed on to the pool's h2 client; an unanswered keepalive PING
//! closes the connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::task::Context;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use h2::Reason;

use super::conn::{self, Handler, ReadLimits, Wakes};
use super::frame::{self, FrameError, Settings};
use super::side::{Fields, Role, Side, Windows};
use crate::status::{Code, Status};
use crate::upstream::{Endpoint, Outcome, PoolSettings, Transport};

/// The payload of the relay's keepalive PINGs.
const KEEPALIVE: [u8; 8] = *b"grpcedge";

/// Header-list limit for what backends send: generous, as backends are trusted
/// more than clients, but bounded.
const UPSTREAM_MAX_HEADER_LIST: u32 = 1 << 20;

/// A relay connection as its pool sees it.
pub(crate) struct RelayLink {
    /// The connection's send side: relayed calls open their streams here.
    pub(crate) side: Arc<Side>,
    /// The backend's SETTINGS_MAX_CONCURRENT_STREAMS (as last announced).
    pub(crate) peer_max_streams: Arc<AtomicU32>,
}

/// Starts the relay on `transport` (connected to `target`) and a bridge
/// for the pool's h2 client. Returns the bridge's far end and the link once
/// the backend's first SETTINGS arrived (so its stream limit is known).
pub(crate) async fn open(
    transport: Transport,
    target: Arc<str>,
    endpoint: Weak<Endpoint>,
    settings: &PoolSettings,
) -> Result<(tokio::io::DuplexStream, RelayLink), String> {
    let windows = Windows {
        stream: settings.stream_window,
        connection: settings.connection_window,
    };
    let side = Side::opening(Role::Upstream, windows, endpoint.clone(), upstream_settings(windows));
    let peer_max_streams = Arc::new(AtomicU32::new(u32::MAX));
    // The bridge: the pool's h2 client speaks to it as to a server, and
    // each stream it opens goes out on the relay connection.
    let (near, far) = tokio::io::duplex(256 << 10);
    let bridge = Side::opening(
        Role::Client,
        windows,
        Weak::new(),
        Settings {
            initial_window_size: Some(windows.stream),
            max_header_list_size: Some(UPSTREAM_MAX_HEADER_LIST),
            ..Settings::default()
        },
    );
    bridge.lock().refuse_with_reset = true;
    let (ready, is_ready) = oneshot::channel();
    let handler = UpstreamHandler {
        peer_max_streams: Some(peer_max_streams.clone()),
        ready: Some(ready),
        target: target.clone(),
        keepalive: Some(Keepalive::new(settings)),
        calm: false,
        bridge: Some(Arc::downgrade(&bridge)),
    };
    let limits = ReadLimits {
        max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
        max_header_list_size: UPSTREAM_MAX_HEADER_LIST,
        header_table_size: 4096,
    };
    let relayed = side.clone();
    let bridged = bridge.clone();
    // The task keeps its endpoint alive: one that discovery removed stays
    // listed as draining while its calls finish here.
    let keep = endpoint.upgrade();
    tokio::spawn(async move {
        conn::run(transport, relayed, handler, limits, false).await;
        // The connection is gone: the bridge's calls were told; the pool's
        // h2 client hears the end once they have.
        drain(&bridged, Reason::NO_ERROR);
        drop(keep);
    });
    let bridge_handler = BridgeHandler {
        upstream: side.clone(),
        last_opened: 0,
    };
    let bridge_limits = ReadLimits {
        max_frame_size: frame::DEFAULT_MAX_FRAME_SIZE,
        max_header_list_size: UPSTREAM_MAX_HEADER_LIST,
        header_table_size: 4096,
    };
    let upstream = side.clone();
    tokio::spawn(async move {
        conn::run(near, bridge, bridge_handler, bridge_limits, true).await;
        // The pool closed its h2 connection (retired, or the pool is gone):
        // the relay connection ends once its calls have.
        drain(&upstream, Reason::NO_ERROR);
    });
    match is_ready.await {
        Ok(()) => Ok((far, RelayLink { side, peer_max_streams })),
        Err(_) => Err(format!(
            "upstream {target} closed the connection during the HTTP/2 handshake"
        )),
    }
}

/// Takes no new streams on `side`, says so with a GOAWAY, and lets its
/// task end once its streams have.
fn drain(side: &Arc<Side>, reason: Reason) {
    let mut state = side.lock();
    if !state.draining && !state.is_closed() {
        state.draining = true;
        frame::write_goaway(&mut state.out, 0, reason, b"");
    }
    drop(state);
    side.wake();
}

/// Keepalive for a connection with calls in flight: a PING every
/// `keepalive_interval`; one unanswered for `keepalive_timeout` means the
/// connection is dead (a frozen backend, a partition that drops packets).
struct Keepalive {
    check: tokio::time::Interval,
    interval: Duration,
    timeout: Duration,
    last_ping: Instant,
    ping_sent: Option<Instant>,
}

impl Keepalive {
    fn new(settings: &PoolSettings) -> Self {
        let now = Instant::now();
        let every = settings
            .keepalive_interval
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        Keepalive {
            check: tokio::time::interval_at(now + every, every),
            interval: settings.keepalive_interval,
            timeout: settings.keepalive_timeout,
            last_ping: now,
            ping_sent: None,
        }
    }

    /// Pings when due; `Err` with how long the last PING went unanswered
    /// once the connection is to be given up. `Ok(true)`: a PING was written.
    fn poll(&mut self, side: &Arc<Side>, cx: &mut Context<'_>) -> Result<bool, Duration> {
        let mut pinged = false;
        while self.check.poll_tick(cx).is_ready() {
            let now = Instant::now();
            if let Some(sent) = self.ping_sent {
                if now - sent > self.timeout {
                    return Err(self.timeout);
                }
                continue;
            }
            let mut state = side.lock();
            if state.is_closed() || state.stream_count() == 0 || now - self.last_ping < self.interval {
                continue;
            }
            frame::write_ping(&mut state.out, false, KEEPALIVE);
            self.ping_sent = Some(now);
            self.last_ping = now;
            pinged = true;
        }
        Ok(pinged)
    }
}

struct UpstreamHandler {
    /// Where the backend's SETTINGS_MAX_CONCURRENT_STREAMS goes (none for
    /// the in-process fallback connection).
    peer_max_streams: Option<Arc<AtomicU32>>,
    /// Told when the backend's first SETTINGS arrive.
    ready: Option<oneshot::Sender<()>>,
    keepalive: Option<Keepalive>,
    target: Arc<str>,
    /// The backend said ENHANCE_YOUR_CALM: the calls the connection's end
    /// cuts are told so.
    calm: bool,
    /// The pool's bridge onto this connection, told of the backend's GOAWAY.
    bridge: Option<Weak<Side>>,
}

impl UpstreamHandler {
    /// The connection is gone: so is the bridge onto it. The pool's h2
    /// client sees its streams fail with the connection, as over a socket,
    /// and reads the backend's ENHANCE_YOUR_CALM in the GOAWAY it gets
    /// first, to tell its calls why.
    fn close_bridge(&mut self) {
        let Some(bridge) = self.bridge.take().and_then(|b| b.upgrade()) else {
            return;
        };
        let mut state = bridge.lock();
        if self.calm {
            let last = state.last_opened();
            frame::write_goaway(&mut state.out, last, Reason::ENHANCE_YOUR_CALM, b"");
        }
        // Its calls go with it, unanswered: their leg here is gone too.
        drop(state.close());
        drop(state);
        bridge.wake();
    }
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
        if let (Some(max), Some(peer_max)) = (settings.max_concurrent_streams, &self.peer_max_streams) {
            peer_max.store(max, Ordering::Relaxed);
        }
        if let Some(ready) = self.ready.take() {
            let _ = ready.send(());
        }
    }

    fn goaway(&mut self, side: &Arc<Side>, last_stream: u32, reason: Reason, wakes: &mut Wakes) {
        self.calm |= reason == Reason::ENHANCE_YOUR_CALM;
        // Streams above the last one were never processed: safe to send
        // elsewhere (relayed calls), or refused to the pool's h2 client,
        // which sends them elsewhere itself.
        let refused = {
            let mut state = side.lock();
            state.draining = true;
            if reason == Reason::ENHANCE_YOUR_CALM {
                state.refused_our_traffic = true;
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
        // The pool's h2 client learns it too (with the reason, which the
        // pool reads to tell why the connection ended): no new streams.
        if let Some(bridge) = self.bridge.as_ref().and_then(Weak::upgrade) {
            let mut state = bridge.lock();
            if !state.draining {
                state.draining = true;
                let last = state.last_opened();
                frame::write_goaway(&mut state.out, last, reason, b"");
            }
            drop(state);
            wakes.add(&bridge);
        }
    }

    fn closing(&mut self) {
        self.close_bridge();
    }

    fn lost(&self) -> Status {
        match self.calm {
            true => Status::new(Code::Unavailable, crate::upstream::calm_message(&self.target)),
            false => Status::new(Code::Unavailable, format!("upstream {} connection lost", self.target)),
        }
    }

    fn pong(&mut self) {
        if let Some(keepalive) = &mut self.keepalive {
            keepalive.ping_sent = None;
        }
    }

    fn poll_timers(&mut self, side: &Arc<Side>, cx: &mut Context<'_>, wakes: &mut Wakes) -> bool {
        let Some(keepalive) = &mut self.keepalive else {
            return false;
        };
        match keepalive.poll(side, cx) {
            Ok(pinged) => pinged,
            Err(waited) => {
                tracing::info!(target = %self.target, ?waited, "relay connection dead: keepalive ping unanswered");
                self.close_bridge();
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

/// The bridge's role: the pool's h2 client opens streams on it as on a
/// backend, and each goes out on the relay connection, unchanged (the h2
/// path already shaped the request). A stream the relay connection cannot
/// take is refused, so the h2 path sends it elsewhere.
struct BridgeHandler {
    upstream: Arc<Side>,
    last_opened: u32,
}

impl Handler for BridgeHandler {
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
        let opened = super::side::open_unchanged(side, stream, &self.upstream, fields, end_stream);
        let mut state = side.lock();
        match opened {
            Some(upstream_stream) => {
                if let Some(half) = state.half_mut(stream) {
                    half.peer_stream = upstream_stream;
                }
                if end_stream {
                    state.received_end(stream);
                }
                wakes.add(&self.upstream);
            }
            None => {
                state.remove(stream);
                frame::write_rst_stream(&mut state.out, stream, Reason::REFUSED_STREAM);
            }
        }
        drop(state);
        wakes.add(side);
        Ok(())
    }

    fn oversized_headers(&mut self, side: &Arc<Side>, stream: u32, wakes: &mut Wakes) {
        self.last_opened = self.last_opened.max(stream);
        let half = side.lock().reset(stream, Reason::REFUSED_STREAM);
        if let Some(half) = half {
            half.peer.lock().reset(half.peer_stream, Reason::CANCEL);
            wakes.add(&half.peer);
        }
        wakes.add(side);
    }

    fn goaway(&mut self, side: &Arc<Side>, _last_stream: u32, _reason: Reason, _wakes: &mut Wakes) {
        side.lock().draining = true;
    }

    fn lost(&self) -> Status {
        Status::new(Code::Cancelled, "the gateway closed its connection to the relay")
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
        peer_max_streams: None,
        ready: None,
        keepalive: None,
        target: Arc::from("the gateway"),
        calm: false,
        bridge: None,
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
