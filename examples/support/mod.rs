//! What the examples share that is not what they show: the `--listen` and
//! `--once` command line, `main`'s exit codes, and the plain HTTP/1.1 client
//! their `--once` self-checks call the gateway with.

// Each example uses its own part of this.
#![allow(dead_code)]

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn Error + Send + Sync>;

/// `--listen ADDR` and `--once`.
pub struct Options {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Make a few calls, print the answers, and exit.
    pub once: bool,
}

impl Options {
    /// Parses `--listen ADDR` and `--once`; `--once` alone listens on a free port.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let (mut listen, mut once) = (None, false);
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--once" => once = true,
                "--listen" => listen = Some(parse_listen(args.next())?),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Self {
            listen: listen.unwrap_or_else(|| default_listen(once)),
            once,
        })
    }
}

/// The value after `--listen`.
pub fn parse_listen(value: Option<String>) -> Result<SocketAddr, String> {
    let value = value.ok_or("--listen needs an address")?;
    value.parse().map_err(|e| format!("--listen {value}: {e}"))
}

/// 127.0.0.1:8080, or a free port for a `--once` run.
pub fn default_listen(once: bool) -> SocketAddr {
    let port = if once { 0 } else { 8080 };
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Parses the command line and runs; usage mistakes exit 2, failures 1.
pub async fn main<O, F>(
    usage: &str,
    parse: impl FnOnce(std::iter::Skip<std::env::Args>) -> Result<O, String>,
    run: impl FnOnce(O) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), BoxError>>,
{
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: {e}\n{usage}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An error naming what a self-check did not get, unless `ok`.
pub fn check(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(format!("unexpected {what}").into())
    }
}

/// A request without a body for `path` on `addr`, with `headers`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<http::Request<Full<Bytes>>, BoxError> {
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Ok(request.body(Full::default())?)
}

/// Sends `request` on a fresh HTTP/1.1 connection; the whole answer.
pub async fn send(
    addr: SocketAddr,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), BoxError> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(connection);
    let (parts, body) = sender.send_request(request).await?.into_parts();
    Ok((parts.status, parts.headers, body.collect().await?.to_bytes()))
}

/// One bodiless HTTP/1.1 exchange on a fresh connection.
pub async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), BoxError> {
    send(addr, request(addr, method, path, headers)?).await
}
