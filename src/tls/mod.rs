//! TLS on both sides of the gateway, with certificate rotation that does not
//! page anyone at 3am.
//!
//! - [`ServerTls`] terminates TLS on the listener (`tls` in the config): ALPN
//!   `h2` and `http/1.1`, TLS 1.2 and 1.3 with rustls' defaults (*ring*), and
//!   optional client certificates verified against `client_ca`, whose
//!   identity ([`PeerIdentity`]) reaches every request through `ConnInfo`.
//! - [`ClientTls`] opens TLS towards upstreams (`upstreams.*.tls`): trust roots
//!   from `ca` (the system's when absent), an optional client certificate,
//!   `server_name` for SNI and verification, ALPN `h2`. Handshake failures are
//!   [`TlsError`]s that say what to fix. A [`generation`](ClientTls::generation)
//!   number and a watch channel tell the pool when connections were made with
//!   an older certificate.
//! - Both reload their files when they change (inotify on the directories, and
//!   a poll): a new set is validated before it replaces the old one, a bad set
//!   keeps the old one and is counted ([`TlsStatus`]), and every certificate's
//!   expiry is known ([`CertInfo`]) and warned about ahead of time.
//!
//! This module opens no sockets and knows nothing about HTTP: `server` hands
//! it accepted TCP streams, the upstream pool hands it connected ones.

mod cert_info;
mod check;
mod client;
#[cfg(test)]
mod client_tests;
mod error;
mod load;
mod reload;
mod server;
#[cfg(test)]
mod tests;
mod validate;

use std::time::Duration;

use serde::Serialize;

pub(crate) use cert_info::unix_now;
pub use cert_info::{CertInfo, CertRole, PeerIdentity, SubjectAltName};
pub(crate) use check::check_listener;
pub use check::{CertReport, certificate_report};
pub use client::ClientTls;
pub(crate) use error::describe_server_side;
pub use error::{LoadError, Problem, TlsError};
pub(crate) use server::Negotiated;
pub use server::ServerTls;

/// Certificates expiring within this window are warned about (in logs and by
/// `grpc-edge check`): 7 days.
pub const DEFAULT_EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);

/// [`ClientTls::expiring_soon`] is true within this much of the client
/// certificate's expiry: 5 minutes.
pub const CLIENT_EXPIRY_DRAIN: Duration = Duration::from_secs(5 * 60);

/// How certificate files are watched.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    /// The files are re-read this often even when inotify says nothing
    /// (default 60 s).
    pub poll_interval: Duration,
    /// After a file event, wait until the directory has been quiet this long
    /// before reading, so a writer replacing the certificate and then the key
    /// is seen as one change (default 250 ms).
    pub settle: Duration,
    /// Warn about certificates expiring within this window
    /// (default [`DEFAULT_EXPIRY_WARNING`]).
    pub expiry_warning: Duration,
    /// After a client certificate rotation, upstream connections made with
    /// the old one are retired at a random moment within this window (at
    /// once when the old certificate is about to expire). Default 5 minutes.
    pub upstream_drain: Duration,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(60),
            settle: Duration::from_millis(250),
            expiry_warning: DEFAULT_EXPIRY_WARNING,
            upstream_drain: Duration::from_secs(300),
        }
    }
}

/// The certificates one TLS side uses now, and how its reloads went; for
/// `GET /certs` and metrics.
#[derive(Clone, Debug, Serialize)]
pub struct TlsStatus {
    /// Every certificate loaded from the configured files: the chain first,
    /// then the CA bundle.
    pub certificates: Vec<CertInfo>,
    /// Increases with every change that was loaded (starts at 1).
    pub generation: u64,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Rejected sets of files since start (each bad set counted once).
    pub reload_errors: u64,
    /// Why the last rejected set was rejected.
    pub last_error: Option<String>,
}
