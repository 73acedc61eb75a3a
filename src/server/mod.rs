//! Listeners: accepts connections on the one port, tells HTTP/2 (prior
//! knowledge, the client preface) from HTTP/1.1 by the first bytes — or, with
//! `tls` configured, terminates TLS and goes by ALPN — serves each with the
//! right protocol, and shuts down gracefully — stop accepting, send GOAWAY /
//! finish the request in progress, wait for in-flight calls up to a deadline,
//! then return.

mod h1;
pub(crate) mod h2;
mod io;
pub(crate) mod resets;
mod stall;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

use crate::gateway::{ConnInfo, Gateway};
use crate::tls::{Negotiated, ReloadOptions, ServerTls};

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Protocol limits for client connections.
#[derive(Clone, Debug)]
pub struct Limits {
    /// HTTP/2 stream flow-control window.
    pub stream_window: u32,
    /// HTTP/2 connection flow-control window.
    pub connection_window: u32,
    /// Client connections served at once; one more is closed as soon as it
    /// is accepted (Envoy's `global_downstream_max_connections`). This keeps
    /// file descriptors for upstream connections and certificate reloads
    /// when clients flood the listener. Default: three quarters of the
    /// process's open-file limit (see [`raise_open_file_limit`]).
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// Largest header block accepted (HTTP/2) or header section (HTTP/1.1).
    pub max_header_list_size: u32,
    /// Bytes buffered per stream for a slow client before writes wait.
    pub max_send_buffer: usize,
    /// Time allowed for a new connection to finish its TLS handshake, and
    /// again to send its first request headers. An HTTP/1.1 connection
    /// waiting for its next request is closed after this long too.
    pub handshake_timeout: Duration,
    /// An HTTP/2 connection with no call in flight for this long (to twice
    /// as long) is closed gracefully, with a GOAWAY; a stream in flight
    /// keeps it open however long it lasts (Envoy's `idle_timeout`, whose
    /// default this is). Zero: never.
    pub idle_timeout: Duration,
    /// A client connection older than this (±10%, so a fleet's connections
    /// do not all end at once) is ended gracefully: HTTP/2 gets a GOAWAY
    /// and its streams finish, HTTP/1.1 closes after the request in
    /// progress. Clients reconnect, and so spread over replicas added
    /// since: grpc-edge's own replicas behind an L4 balancer have the
    /// one-connection problem too (gRPC's `MAX_CONNECTION_AGE`, Envoy's
    /// `max_connection_duration`). Zero: never.
    pub max_connection_age: Duration,
    /// The rapid-reset guard (CVE-2023-44487; Envoy's premature-reset
    /// limit): an HTTP/2 connection whose client has reset more than half of
    /// its streams early, counted over at least this many streams, is
    /// closed with GOAWAY(ENHANCE_YOUR_CALM). Zero: never.
    pub premature_reset_streams: u32,
    /// How young a stream must be for the client's reset to count as early.
    /// A reset after the response ended, or at about the deadline the
    /// client itself declared (`grpc-timeout`), never counts.
    pub premature_reset_min_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            stream_window: 1 << 20,
            connection_window: 2 << 20,
            max_connections: default_max_connections(),
            max_concurrent_streams: 1000,
            max_header_list_size: 64 << 10,
            max_send_buffer: 256 << 10,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            max_connection_age: Duration::from_secs(30 * 60),
            premature_reset_streams: 500,
            premature_reset_min_lifetime: Duration::from_secs(1),
        }
    }
}

/// What a zero ("never") connection timer waits for instead.
const NEVER: Duration = Duration::from_secs(86_400 * 365);

/// When a connection accepted now reaches `max_connection_age` (±10%):
/// far in the future when there is none.
pub(crate) fn connection_retirement(limits: &Limits) -> tokio::time::Instant {
    let age = match limits.max_connection_age {
        Duration::ZERO => NEVER,
        age => age.mul_f64(0.9 + fastrand::f64() * 0.2),
    };
    tokio::time::Instant::now() + age
}

/// Three quarters of the open-file limit: the rest is for upstream
/// connections, certificate and descriptor files, and the admin listener.
fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    soft.map_or(usize::MAX, |limit| usize::try_from(limit / 4 * 3).unwrap_or(usize::MAX))
}

/// Raises this process's soft open-file limit to its hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: distributions start services
/// with a soft limit of 1,024, far below what a busy gateway needs (one
/// descriptor per client and per upstream connection). Returns the limit
/// before and after, or `None` if it could not be raised (or was already
/// as high as allowed). Call it before building [`ServeOptions`], whose
/// default connection limit follows it.
pub fn raise_open_file_limit() -> Option<(u64, u64)> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(soft), maximum) = (limit.current, limit.maximum) else {
        return None;
    };
    let target = maximum.unwrap_or(u64::MAX);
    if soft >= target {
        return None;
    }
    let raised = rustix::process::Rlimit {
        current: maximum,
        maximum,
    };
    setrlimit(Resource::Nofile, raised).ok()?;
    Some((soft, target))
}

/// How the server behaves.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Limits for client connections.
    pub limits: Limits,
    /// How long a shutdown waits for calls in flight before returning.
    pub drain_timeout: Duration,
    /// How the listener's certificate files are watched, when `tls` is set
    /// (a `listener_tls` given here carries its own).
    pub tls_reload: ReloadOptions,
    /// A listener TLS built by the caller (who keeps a clone to read its
    /// status); `None` builds one from the gateway's `tls` configuration.
    pub listener_tls: Option<ServerTls>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            drain_timeout: Duration::from_secs(30),
            tls_reload: ReloadOptions::default(),
            listener_tls: None,
        }
    }
}

/// Counts live connections so a shutdown can wait for them.
#[derive(Default)]
struct Tracker {
    active: AtomicUsize,
    idle: Notify,
}

struct TrackerGuard(Arc<Tracker>);

impl Tracker {
    fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(self.clone())
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Serves `gateway` on `listener` until `shutdown` completes, then drains:
/// the listener closes at once (new connections are refused), HTTP/2 clients
/// get GOAWAY, and calls in flight have `drain_timeout` to finish.
///
/// With `tls` in the gateway's configuration (or `options.listener_tls`)
/// every connection is TLS; certificate changes on disk apply to new
/// connections. If the certificate files cannot be loaded, nothing is served
/// (never plaintext instead): the error is logged and this returns at once.
pub async fn serve(gateway: Gateway, listener: TcpListener, shutdown: impl Future<Output = ()>, options: ServeOptions) {
    let tls = match listener_tls(&gateway, &options) {
        Ok(tls) => tls,
        Err(error) => {
            tracing::error!(%error, "listener TLS cannot be loaded; not serving");
            return;
        }
    };
    if let Some(tls) = &tls {
        tls.start_reloading();
        gateway.set_listener_tls(tls.clone());
    }
    let limits = Arc::new(options.limits);
    let tracker = Arc::new(Tracker::default());
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    if crate::relay::enabled() {
        tracing::info!("native gRPC over HTTP/2 goes through the frame relay (GRPC_EDGE_RELAY=off turns it off)");
    } else {
        tracing::info!("native gRPC over HTTP/2 goes through the h2 path: the frame relay is off (GRPC_EDGE_RELAY)");
    }
    gateway.set_ready(true);
    let mut last_limit_warning = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, remote)) => {
                    if tracker.active.load(Ordering::Acquire) >= limits.max_connections {
                        gateway.note_connection_over_limit();
                        if last_limit_warning.is_none_or(|at: std::time::Instant| at.elapsed() >= Duration::from_secs(10)) {
                            last_limit_warning = Some(std::time::Instant::now());
                            tracing::warn!(
                                max_connections = limits.max_connections,
                                %remote,
                                "at the client connection limit: closing new connections (warned every 10 s at most)"
                            );
                        }
                        drop(tcp);
                        continue;
                    }
                    let guard = tracker.enter();
                    gateway.connection_opened();
                    let gateway = gateway.clone();
                    let limits = limits.clone();
                    let stopped = stopped.clone();
                    let tls = tls.clone();
                    let counted = gateway.clone();
                    tokio::spawn(async move {
                        match tls {
                            Some(tls) => serve_tls_connection(tcp, remote, tls, gateway, limits, stopped).await,
                            None => serve_connection(tcp, remote, gateway, limits, stopped).await,
                        }
                        counted.connection_closed();
                        drop(guard);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    gateway.set_ready(false);
    drop(listener);
    let _ = stop.send(true);
    let in_flight = tracker.active.load(Ordering::Acquire);
    tracing::info!(connections = in_flight, drain_timeout = ?options.drain_timeout, "shutting down: draining connections");
    let idle = tracker.idle.notified();
    tokio::pin!(idle);
    idle.as_mut().enable();
    if tracker.active.load(Ordering::Acquire) > 0 && tokio::time::timeout(options.drain_timeout, idle).await.is_err() {
        tracing::warn!(
            connections = tracker.active.load(Ordering::Acquire),
            "drain timeout reached; closing remaining connections"
        );
    }
    gateway.close_upstreams();
}

/// The listener's TLS: the caller's, or built from the configuration.
fn listener_tls(gateway: &Gateway, options: &ServeOptions) -> Result<Option<ServerTls>, crate::tls::LoadError> {
    if let Some(tls) = &options.listener_tls {
        return Ok(Some(tls.clone()));
    }
    gateway
        .config()
        .tls
        .as_ref()
        .map(|config| ServerTls::new(config, options.tls_reload.clone()))
        .transpose()
}

/// Serves one plaintext connection, sniffing the protocol.
async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    gateway: Gateway,
    limits: Arc<Limits>,
    stopped: watch::Receiver<bool>,
) {
    // Without TCP_NODELAY small gRPC frames wait on Nagle's algorithm.
    let _ = tcp.set_nodelay(true);
    let info = Arc::new(ConnInfo::new(Some(remote), false));
    serve_sniffed(tcp, gateway, info, limits, stopped).await;
}

/// Terminates TLS, then serves the protocol chosen over ALPN (or sniffed,
/// when the client offered none).
async fn serve_tls_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: ServerTls,
    gateway: Gateway,
    limits: Arc<Limits>,
    stopped: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let accepted = match tokio::time::timeout(limits.handshake_timeout, tls.accept(tcp)).await {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(e)) => {
            let error = crate::tls::describe_server_side(&e);
            tracing::debug!(%remote, %error, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let info = Arc::new(ConnInfo::new(Some(remote), true).with_client_identity(accepted.peer));
    match accepted.protocol {
        Negotiated::Http2 => h2::serve(accepted.stream, gateway, info, limits, stopped).await,
        Negotiated::Http1 => h1::serve(accepted.stream, gateway, info, limits, stopped).await,
        Negotiated::Unknown => serve_sniffed(accepted.stream, gateway, info, limits, stopped).await,
    }
}

/// Tells HTTP/2 (the client preface) from HTTP/1.1 by the first bytes and
/// serves the connection with that protocol.
async fn serve_sniffed<IO>(
    mut io: IO,
    gateway: Gateway,
    info: Arc<ConnInfo>,
    limits: Arc<Limits>,
    stopped: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    let sniff = async {
        loop {
            let n = io.read(&mut first[filled..]).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            filled += n;
            if first[..filled] != H2_PREFACE[..filled] {
                return Ok(Some(false));
            }
            if filled == H2_PREFACE.len() {
                return Ok(Some(true));
            }
        }
    };
    let is_h2 = match tokio::time::timeout(limits.handshake_timeout, sniff).await {
        Ok(Ok(Some(is_h2))) => is_h2,
        Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return,
    };
    let io = io::Prefixed::new(Bytes::copy_from_slice(&first[..filled]), io);
    if is_h2 && crate::relay::enabled() {
        crate::relay::serve(io, gateway, info, limits, stopped).await;
    } else if is_h2 {
        h2::serve(io, gateway, info, limits, stopped).await;
    } else {
        h1::serve(io, gateway, info, limits, stopped).await;
    }
}

/// Serves the admin endpoints (`/healthz`, `/readyz`, `/upstreams`, `/config`,
/// `/routes`) on `listener` until `shutdown` completes. Run it beside
/// [`serve`], and stop it after `serve` returns so `/readyz` reports the drain.
pub async fn serve_admin(gateway: Gateway, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let admin = tokio::spawn(crate::admin::serve(gateway, listener, stopped));
    shutdown.await;
    let _ = stop.send(true);
    let _ = admin.await;
}
