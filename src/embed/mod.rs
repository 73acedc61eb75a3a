//! Embedding the gateway in someone else's server: an axum `Router` to
//! `nest` or `merge`, a plain `tower::Service` for hyper users, the admin
//! endpoints as a router of their own, and a shutdown handle that drains
//! calls in flight.
//!
//! - `stall_watch`: ends streams whose client stopped reading, which the
//!   host's server cannot know to do.

mod stall_watch;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};

use crate::body::{Body, BoxError};
use crate::gateway::{ConnInfo, Gateway};

impl Gateway {
    /// Everything the gateway serves (REST, gRPC-Web, native gRPC, CORS
    /// preflights) as an axum router, to `nest` under a prefix or `merge`
    /// with your own routes. The client address comes from axum's
    /// `ConnectInfo<SocketAddr>` when the app is served with it.
    ///
    /// The router claims no path of its own: it is one fallback service. So
    /// your routes never conflict with it. They win for their own paths
    /// (for every HTTP method on that path, as axum routes do), and the
    /// gateway answers everything else. The one mistake is to `merge` it into
    /// a router that has a fallback of its own: axum refuses two fallbacks
    /// with a panic when the app is assembled, before anything is served.
    /// `nest` next to a host fallback is fine.
    ///
    /// Under a prefix, REST clients and gRPC-Web clients (base URL
    /// `https://host/prefix`) work as usual; native gRPC clients do not put
    /// a prefix in front of `/pkg.Service/Method`, so `merge` the router at
    /// the root for them.
    ///
    /// ```no_run
    /// # fn example(gateway: grpc_edge::Gateway) {
    /// let app = axum::Router::new()
    ///     .route("/hello", axum::routing::get(|| async { "hi" }))
    ///     .nest("/api", gateway.router());
    /// # let _ = app; }
    /// ```
    pub fn router(&self) -> axum::Router {
        axum::Router::new().fallback_service(self.clone().into_service())
    }

    /// The gateway as a `tower::Service` over any request body, for hyper
    /// (or any tower stack) without axum. It is always ready and never
    /// fails: every problem is an answer (a gRPC status, or a REST error
    /// body). For `x-forwarded-for`, put the client's `SocketAddr` in the
    /// request's extensions (axum's `ConnectInfo<SocketAddr>` works too).
    ///
    /// A gateway handed to its host this way counts as serving: `/readyz`
    /// answers 200 and the built-in health service SERVING (until it drains).
    pub fn into_service(self) -> GatewayService {
        if !self.is_ready() && !self.is_draining() {
            self.set_ready(true);
        }
        GatewayService { gateway: self }
    }

    /// The admin endpoints (`/metrics`, `/healthz`, `/readyz`, `/upstreams`,
    /// `/certs`, `/config`, `/routes`) as an axum router, for the host app
    /// to serve wherever it serves its own.
    pub fn admin_router(&self) -> axum::Router {
        let gateway = self.clone();
        axum::Router::new().fallback(move |request: Request<axum::body::Body>| {
            let gateway = gateway.clone();
            async move { crate::admin::answer(&gateway, &request).map(axum::body::Body::new) }
        })
    }

    /// A handle that drains the gateway: new calls are refused, calls in
    /// flight finish.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { gateway: self.clone() }
    }
}

/// Drains a gateway used as a library.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    gateway: Gateway,
}

impl ShutdownHandle {
    /// Refuses new calls (UNAVAILABLE; REST 503), reports NOT_SERVING, and
    /// waits until the calls in flight have finished or `timeout` passed.
    /// Returns whether every call finished.
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.gateway.start_draining();
        let deadline = tokio::time::Instant::now() + timeout;
        while self.gateway.calls_in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// The gateway as a `tower::Service`.
#[derive(Clone, Debug)]
pub struct GatewayService {
    gateway: Gateway,
}

impl<B> tower::Service<Request<B>> for GatewayService
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let gateway = self.gateway.clone();
        let remote = request
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|info| info.0)
            .or_else(|| request.extensions().get::<SocketAddr>().copied());
        Box::pin(async move {
            let conn = ConnInfo::new(remote, false);
            Ok(stall_watch::watch(gateway.handle(request.map(Body::new), &conn).await))
        })
    }
}
