//! Serves HTTP/1.1 connections (REST and gRPC-Web from browsers and curl)
//! with hyper, with a header read timeout and bounded buffers, and closes a
//! connection whose client stops reading a response past the call's limit
//! (see [`super::stall`]).

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::Limits;
use super::stall::{CurrentLimit, StallGuard};
use crate::body::Body;
use crate::gateway::{ConnInfo, Gateway};
use crate::upstream::StallLimit;

/// Serves one HTTP/1.1 connection until it closes, or until a graceful
/// shutdown lets the request in progress finish.
pub(crate) async fn serve<IO>(
    io: IO,
    gateway: Gateway,
    info: Arc<ConnInfo>,
    limits: Arc<Limits>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let current = CurrentLimit::default();
    let io = StallGuard::new(io, current.clone());
    let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let gateway = gateway.clone();
        let info = info.clone();
        let current = current.clone();
        async move {
            let response = gateway.handle(request.map(Body::hyper), &info).await;
            let limit = response.body().stall_limit();
            current.set(limit.or_else(|| response.extensions().get::<StallLimit>().cloned()));
            Ok::<_, Infallible>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.max_header_list_size as usize + 8192)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let mut draining = *shutdown.borrow();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
    let retire = tokio::time::sleep_until(super::connection_retirement(&limits));
    tokio::pin!(retire);
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
                }
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
            () = &mut retire, if !draining => {
                tracing::debug!(max_connection_age = ?limits.max_connection_age, "retiring an old HTTP/1.1 connection");
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}
