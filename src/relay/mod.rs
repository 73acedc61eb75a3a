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

/// The environment variable that turns the relay off (`off`, `0` or
/// `false`), read once per process.
const SWITCH: &str = "GRPC_EDGE_RELAY";

/// Whether HTTP/2 client connections go through the relay, and upstream
/// pools open relay connections for it (see [`serving`]): yes, unless
/// [`SWITCH`] says `off`. Then every call takes the h2 path, as before the
/// relay existed: the way back if the relay misbehaves somewhere.
pub(crate) fn enabled() -> bool {
    static ENABLED: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        let value = std::env::var(SWITCH).unwrap_or_default();
        match switch_value(&value) {
            Some(on) => on,
            None => {
                tracing::warn!(
                    variable = SWITCH,
                    value,
                    "expected on or off (also 1/0, true/false); the relay stays on"
                );
                true
            }
        }
    });
    *ENABLED
}

/// What a value of [`SWITCH`] means: `None` when it means nothing.
fn switch_value(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "on" | "1" | "true" => Some(true),
        "off" | "0" | "false" => Some(false),
        _ => None,
    }
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

#[cfg(test)]
mod tests {
    use super::switch_value;

    #[test]
    fn the_switch_is_on_unless_it_says_off() {
        for on in ["", "on", "1", "true", " ON ", "True"] {
            assert_eq!(switch_value(on), Some(true), "{on:?}");
        }
        for off in ["off", "0", "false", "OFF", " false\n"] {
            assert_eq!(switch_value(off), Some(false), "{off:?}");
        }
        for nonsense in ["of", "no", "2", "relay"] {
            assert_eq!(switch_value(nonsense), None, "{nonsense:?}");
        }
    }
}
