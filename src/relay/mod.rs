//! The HTTP/2 frame relay: native gRPC relayed frame by frame between a
//! client connection and pooled upstream connections, without the general
//! HTTP/2 machinery (per-stream tasks, header maps, body queues) that the
//! `h2` crate needs to serve arbitrary requests. `docs/relay.md` has the
//! design, what it is measured to save, and how it lands.
//!
//! - [`frame`]: HTTP/2 frames (RFC 9113 §4 and §6); [`hpack`]: header
//!   compression (RFC 7541).
//! - `side`: each connection's shared send side: output, HPACK encoder,
//!   stream table, flow control, call timers.
//! - `conn`: the task of one connection, client or upstream.
//! - `client`: a client connection's calls: routed and relayed (and sent
//!   elsewhere when a backend refuses them unprocessed), or handed to the h2
//!   path in-process. [`upstream`]: the connections to an endpoint, which
//!   its pool opens and owns, and the bridge the pool's h2 client uses onto
//!   them.

mod client;
mod conn;
pub(crate) mod frame;
pub(crate) mod hpack;
mod side;
pub(crate) mod upstream;

pub(crate) use client::serve;
pub(crate) use side::Side;

/// Whether HTTP/2 client connections go through the relay, and upstream
/// pools open relay connections for it (see [`serving`]). Until it does
/// everything the h2 path does (`docs/relay.md`), only this environment
/// variable turns it on, for its tests and benchmarks.
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("GRPC_EDGE_EXPERIMENTAL_RELAY").is_some_and(|v| v == "1"));
    *ENABLED
}

/// Set once this process has served a client connection through the relay.
static SERVING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether upstream pools open relay connections: only once the relay
/// serves clients. A gateway mounted as a router in someone's axum app
/// never does, and its native calls would otherwise all reach their
/// backends through the bridge (`upstream::pool`).
pub(crate) fn serving() -> bool {
    enabled() && SERVING.load(std::sync::atomic::Ordering::Relaxed)
}
