//! The HTTP/2 frame relay: native gRPC relayed frame by frame between a
//! client connection and pooled upstream connections, without the general
//! HTTP/2 machinery (per-stream tasks, header maps, body queues) that the
//! `h2` crate needs to serve arbitrary requests. `docs/relay.md` has the
//! design, what it is measured to save, and how it lands.
//!
//! This module owns the wire formats the relay speaks: [`frame`] (HTTP/2
//! frames, RFC 9113 §4 and §6) and [`hpack`] (header compression, RFC 7541).

mod client;
mod conn;
pub(crate) mod frame;
pub(crate) mod hpack;
mod side;
pub(crate) mod upstream;

pub(crate) use client::serve;

/// Whether HTTP/2 client connections go through the relay. Until it does
/// everything the h2 path does (`docs/relay.md`), only this environment
/// variable turns it on, for its tests and benchmarks.
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::LazyLock<bool> =
        std::sync::LazyLock::new(|| std::env::var_os("GRPC_EDGE_EXPERIMENTAL_RELAY").is_some_and(|v| v == "1"));
    *ENABLED
}
