//! The demo's browser page (`examples/browser/`): served from its own
//! loopback port, so its calls to the gateway are cross-origin and go
//! through CORS exactly as a real frontend's would.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;

const INDEX: &str = include_str!("../../examples/browser/index.html");
const APP: &str = include_str!("../../examples/browser/app.js");

/// Binds a loopback port and serves the page until the process ends.
pub(crate) async fn serve_page() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(page(request.uri().path()))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn page(path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/" | "/index.html" => (StatusCode::OK, "text/html; charset=utf-8", INDEX),
        "/app.js" => (StatusCode::OK, "text/javascript; charset=utf-8", APP),
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
