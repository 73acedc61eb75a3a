//! DNS discovery for `upstreams.*.dns`: every A/AAAA record of the name is
//! an endpoint (a Kubernetes headless Service). The name is resolved every
//! `dns_refresh`, and at once (at most once a second) when a connect fails
//! or a backend sends GOAWAY. New addresses become endpoints; endpoints whose
//! address disappeared drain (no new calls, in-flight ones finish). When the
//! resolver fails or answers nothing, the last good set stays.
//!
//! The resolver is a trait, so tests (and embedders) can supply their own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::Cluster;

/// The shortest time between two resolutions asked for by failures.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Resolves a host name to addresses.
pub trait Resolve: Send + Sync + 'static {
    /// Every address of `host`, with `port`.
    fn resolve(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system resolver (getaddrinfo, through tokio).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// Splits `host:port` (IPv6 hosts in brackets).
pub(crate) fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_string(), port.parse().ok()?))
}

/// Resolves `host:port` for `cluster` until the cluster is dropped.
pub(crate) async fn run(
    cluster: Weak<Cluster>,
    host: String,
    port: u16,
    every: Duration,
    resolver: Arc<dyn Resolve>,
    refresh: Arc<Notify>,
) {
    loop {
        let last = tokio::time::Instant::now();
        let answer = resolver.resolve(&host, port).await;
        let Some(strong) = cluster.upgrade() else {
            return;
        };
        match answer {
            Ok(mut addresses) if !addresses.is_empty() => {
                addresses.sort();
                addresses.dedup();
                strong.set_endpoints(&addresses);
            }
            Ok(_) => {
                strong.discovery_failed(format!("{host} resolved to no address; keeping the last good set"));
            }
            Err(error) => {
                strong.discovery_failed(format!("resolving {host} failed: {error}; keeping the last good set"));
            }
        }
        drop(strong);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = refresh.notified() => {
                tokio::time::sleep_until(last + MIN_REFRESH).await;
            }
        }
    }
}
