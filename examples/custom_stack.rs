//! The gateway as a plain `tower::Service` inside the host's own stack,
//! served by hyper without axum.
//!
//! Around `gateway.into_service()` the host puts its own layers, outermost first:
//!
//! 1. `RequireBearer`: a call without `Authorization: Bearer <token>` is
//!    refused before it costs anything (REST 401, gRPC `UNAUTHENTICATED`);
//! 2. `Rejections`: errors of the layers below become answers in the caller's
//!    protocol (REST JSON, gRPC or gRPC-Web trailers-only) instead of a dropped connection;
//! 3. tower's `LoadShed` + `ConcurrencyLimit`: beyond `--max-in-flight`
//!    calls waiting for their answer, new calls fail fast (REST 503, gRPC `UNAVAILABLE`).
//!
//! The service behind it is the demo `OrderDesk`, in-process. The concurrency
//! limit holds a slot until a call's response head is ready, so a stream
//! gives its slot back once it has started, not when it ends.
//!
//! ```sh
//! cargo run --example custom_stack                             # 127.0.0.1:8080, until Ctrl-C
//! cargo run --example custom_stack -- --token s3cret --max-in-flight 100 --listen 127.0.0.1:3000
//! cargo run --example custom_stack -- --once                   # a free port, a few calls, exit
//! ```
//!
//! Then, from another terminal:
//!
//! ```sh
//! curl -si localhost:8080/v1/orders/1                                       # 401
//! curl -s -H 'Authorization: Bearer let-me-in' localhost:8080/v1/orders/1   # 200
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use grpc_edge::demo::pb::GetOrderRequest;
use grpc_edge::demo::pb::order_service_client::OrderServiceClient;
use grpc_edge::demo::{DESCRIPTOR_SET, OrderDesk};
use grpc_edge::{Body, BuildError, Code, Gateway, GatewayService, Status};
use http::{HeaderValue, Request, Response, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::{Service, ServiceBuilder, ServiceExt};

mod support;
use support::{BoxError, check, http1};

/// The token `--token` defaults to.
pub const DEFAULT_TOKEN: &str = "let-me-in";

/// The gateway: the demo `OrderDesk`, in-process.
pub fn gateway() -> Result<Gateway, BuildError> {
    Gateway::builder()
        .descriptor_set(DESCRIPTOR_SET)
        .service(OrderDesk::new("behind-the-stack").into_server())
        .build()
}

/// The whole stack, outermost layer first.
pub type Stack = RequireBearer<Rejections<LoadShed<ConcurrencyLimit<GatewayService>>>>;

/// Wraps the gateway in the host's layers: bearer token, rejections, load shedding at `max_in_flight`.
pub fn stack(gateway: &Gateway, token: &str, max_in_flight: usize) -> Stack {
    ServiceBuilder::new()
        .layer_fn(|inner| RequireBearer::new(inner, token))
        .layer_fn(Rejections::new)
        .load_shed()
        .concurrency_limit(max_in_flight)
        .service(gateway.clone().into_service())
}

/// Serves `stack` with hyper (HTTP/1.1 and h2c on one port) until `shutdown`
/// resolves, then waits for open connections to finish.
pub async fn serve(listener: TcpListener, stack: Stack, shutdown: impl Future<Output = ()>) {
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let stack = stack.clone();
        let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            // The gateway reads the client address from here (`x-forwarded-for`).
            request.extensions_mut().insert(remote);
            stack.clone().oneshot(request)
        });
        let connection = connections.watch(http.serve_connection(TokioIo::new(tcp), service).into_owned());
        tokio::spawn(connection);
    }
    connections.shutdown().await;
}

// ---------------------------------------------------------------------------
// The host's layers.

/// The protocol a request speaks, so that a refusal is one its client understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Rest,
    Grpc,
    GrpcWeb,
}

impl Protocol {
    fn of<B>(request: &Request<B>) -> Self {
        let content_type = request.headers().get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
        match content_type {
            Some(ct) if ct.starts_with(b"application/grpc-web") => Self::GrpcWeb,
            Some(ct) if ct.starts_with(b"application/grpc") => Self::Grpc,
            _ => Self::Rest,
        }
    }
}

/// A refusal made by the host, in the caller's protocol.
fn refuse(protocol: Protocol, status: &Status) -> Response<Body> {
    let mut response = match protocol {
        Protocol::Grpc => status.to_grpc_response(),
        Protocol::GrpcWeb => {
            let mut response = status.to_grpc_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc-web+proto"),
            );
            response
        }
        Protocol::Rest => {
            let json = serde_json::json!({"code": status.code.as_i32(), "message": status.message, "details": []});
            let mut response = Response::new(Body::full(json.to_string()));
            *response.status_mut() = status.code.http_status();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    };
    match status.code {
        Code::Unauthenticated => {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Code::Unavailable => {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        _ => {}
    }
    response
}

type ResponseFuture<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

/// Lets through only requests with `Authorization: Bearer <token>` (and CORS
/// preflights, which browsers send without credentials).
#[derive(Clone)]
pub struct RequireBearer<S> {
    inner: S,
    expected: Arc<[u8]>,
}

impl<S> RequireBearer<S> {
    /// Requires `token` in front of `inner`.
    pub fn new(inner: S, token: &str) -> Self {
        Self {
            inner,
            expected: format!("Bearer {token}").into_bytes().into(),
        }
    }

    fn allows<B>(&self, request: &Request<B>) -> bool {
        let preflight = request.method() == http::Method::OPTIONS
            && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let given = request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes);
        preflight || given.is_some_and(|given| constant_time_eq(given, &self.expected))
    }
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S, B> Service<Request<B>> for RequireBearer<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if self.allows(&request) {
            return Box::pin(self.inner.call(request));
        }
        let refusal = refuse(
            Protocol::of(&request),
            &Status::new(Code::Unauthenticated, "a bearer token is required"),
        );
        Box::pin(std::future::ready(Ok(refusal)))
    }
}

/// Turns errors of the layers below (a shed load, above all) into answers.
#[derive(Clone)]
pub struct Rejections<S> {
    inner: S,
}

impl<S> Rejections<S> {
    /// Answers for `inner`'s errors.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B> Service<Request<B>> for Rejections<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the inner stack's business, per call (see `call`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let protocol = Protocol::of(&request);
        // A clone per call, so that the load shedder sees a full limit as an
        // error of this call rather than making every caller wait.
        let call = self.inner.clone().oneshot(request);
        Box::pin(async move {
            Ok(match call.await {
                Ok(response) => response,
                Err(e) if e.is::<tower::load_shed::error::Overloaded>() => refuse(
                    protocol,
                    &Status::new(Code::Unavailable, "too many calls in flight; retry shortly"),
                ),
                Err(e) => refuse(protocol, &Status::new(Code::Internal, e.to_string())),
            })
        })
    }
}

// ---------------------------------------------------------------------------
// The command line.

/// What the command line asked for.
pub struct Options {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The bearer token callers must present.
    pub token: String,
    /// Calls allowed to wait for their answer at once.
    pub max_in_flight: usize,
    /// Make a few calls, print the answers, and exit.
    pub once: bool,
}

const USAGE: &str =
    "usage: cargo run --example custom_stack -- [--listen ADDR] [--token TOKEN] [--max-in-flight N] [--once]";

impl Options {
    /// Parses the flags; `--once` alone listens on a free port.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let (mut listen, mut token, mut max_in_flight, mut once) = (None, DEFAULT_TOKEN.to_string(), 64, false);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or(format!("{arg} needs a value"));
            match arg.as_str() {
                "--once" => once = true,
                "--listen" => listen = Some(support::parse_listen(args.next())?),
                "--token" => token = value()?,
                "--max-in-flight" => {
                    let value = value()?;
                    max_in_flight = match value.parse() {
                        Ok(n) if n > 0 => n,
                        _ => return Err(format!("--max-in-flight: expected a positive integer, got {value:?}")),
                    };
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Self {
            listen: listen.unwrap_or_else(|| support::default_listen(once)),
            token,
            max_in_flight,
            once,
        })
    }
}

/// Serves until Ctrl-C (or, with `--once`, until the self-check is done); then drains.
pub async fn run(options: Options) -> Result<(), BoxError> {
    let gateway = gateway()?;
    let listener = TcpListener::bind(options.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = gateway.shutdown_handle();
    let server = tokio::spawn(serve(
        listener,
        stack(&gateway, &options.token, options.max_in_flight),
        async move {
            let _ = stopped.await;
            drain.drain(Duration::from_secs(30)).await;
        },
    ));
    println!(
        "OrderDesk behind a bearer token and a limit of {} calls in flight, on http://{addr}",
        options.max_in_flight
    );

    let result = if options.once {
        self_check(addr, &options.token, options.max_in_flight).await
    } else {
        println!(
            "  curl -s -H 'Authorization: Bearer {}' http://{addr}/v1/orders/1",
            options.token
        );
        println!("Ctrl-C stops it.");
        tokio::signal::ctrl_c().await.map_err(BoxError::from)
    };
    let _ = stop.send(());
    server.await?;
    result
}

/// Without a token: refused; with it: answered; over the limit: shed.
pub async fn self_check(addr: SocketAddr, token: &str, max_in_flight: usize) -> Result<(), BoxError> {
    let bearer = format!("Bearer {token}");
    let (status, _, _) = http1(addr, "GET", "/v1/orders/1", &[]).await?;
    println!("REST without a token           -> {status}");
    check(status == http::StatusCode::UNAUTHORIZED, "REST answer without a token")?;
    let (status, _, body) = http1(addr, "GET", "/v1/orders/1", &[("authorization", &bearer)]).await?;
    println!(
        "REST with the token            -> {status} {}",
        String::from_utf8_lossy(&body)
    );
    check(status == http::StatusCode::OK, "REST answer with the token")?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let refused = OrderServiceClient::new(channel.clone())
        .get_order(GetOrderRequest {
            name: "orders/1".into(),
        })
        .await
        .expect_err("a call without a token must fail");
    println!("gRPC without a token           -> {:?}", refused.code());
    check(
        refused.code() == tonic::Code::Unauthenticated,
        "gRPC answer without a token",
    )?;
    let value: tonic::metadata::MetadataValue<_> = bearer.parse()?;
    let mut client = OrderServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", value.clone());
        Ok(request)
    });
    let order = client
        .get_order(GetOrderRequest {
            name: "orders/2".into(),
        })
        .await?
        .into_inner();
    println!("gRPC with the token            -> {order:?}");

    // One call more than the limit, each held a second by the desk: exactly one is shed.
    let calls: Vec<_> = (0..=max_in_flight)
        .map(|_| {
            let bearer = bearer.clone();
            tokio::spawn(async move {
                let slow = [("authorization", bearer.as_str()), ("x-demo-delay-ms", "1000")];
                http1(addr, "GET", "/v1/orders/1", &slow)
                    .await
                    .map(|(status, ..)| status)
            })
        })
        .collect();
    let mut shed = 0;
    for call in calls {
        shed += usize::from(call.await?? == http::StatusCode::SERVICE_UNAVAILABLE);
    }
    let label = format!("{} slow calls at once", max_in_flight + 1);
    println!("{label:<31}-> {shed} shed (503)");
    check(shed == 1, "number of shed calls")?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    support::main(USAGE, Options::parse, run).await
}
