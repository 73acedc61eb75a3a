//! A gRPC backend that never decodes messages: it echoes the request
//! message back (a client stream's messages concatenated into one, so
//! repeated fields append), records what it received, and fails, waits or
//! repeats as request metadata says:
//!
//! - `x-repeat: N` — answer with N copies (server streams);
//! - `x-delay-ms: D` — wait before each answer message;
//! - `x-hold: 1` — after the first message, wait until the test calls `release()`;
//! - `x-fail: CODE` — fail with that code (trailers-only), or after the
//!   messages when `x-fail-after: 1`; `x-fail-details: 1` adds an ErrorInfo detail;
//! - `x-reply-http: STATUS` — answer with a plain HTTP status instead of gRPC.
//!
//! Every response carries `x-served-by`, `x-method` and the trailer `x-trailer-note: done`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use prost::Message;
use tokio::sync::Notify;

/// One request as the backend received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub messages: Vec<Bytes>,
}

pub struct RawBackend {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    release: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(name: &'static str) -> RawBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let (rec, rel) = (received.clone(), release.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (rec, rel) = (rec.clone(), rel.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |request| answer(name, rec.clone(), rel.clone(), request));
                    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        RawBackend {
            addr,
            received,
            release,
            task,
        }
    }

    /// Lets a held stream (`x-hold: 1`) send its next message.
    pub fn release(&self) {
        self.release.notify_one();
    }

    pub fn last(&self) -> Received {
        self.received
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend received no call")
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Chunk = Result<Frame<Bytes>, Infallible>;

async fn answer(
    name: &'static str,
    received: Arc<Mutex<Vec<Received>>>,
    release: Arc<Notify>,
    request: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    let messages = split_frames(&bytes);
    received.lock().unwrap().push(Received {
        path: parts.uri.path().to_string(),
        headers: parts.headers.clone(),
        messages: messages.clone(),
    });
    let header = |key: &str| parts.headers.get(key).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let number = |key: &str| header(key).and_then(|v| v.parse::<u64>().ok());

    if let Some(status) = number("x-reply-http") {
        let mut response = Response::new(boxed_body(vec![Ok(Frame::data(Bytes::from_static(b"not grpc")))]));
        *response.status_mut() = http::StatusCode::from_u16(status as u16).unwrap();
        return Ok(response);
    }
    let mut response = Response::new(boxed_body(Vec::new()));
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("x-served-by", HeaderValue::from_static(name));
    headers.insert("x-method", HeaderValue::from_str(parts.uri.path()).unwrap());
    let fail = number("x-fail").map(|c| c as i32);
    let fail_after = header("x-fail-after").is_some();
    let details = header("x-fail-details").is_some();
    if let (Some(code), false) = (fail, fail_after) {
        write_status(headers, code, details);
        return Ok(response);
    }
    let message: Bytes = messages.concat().into();
    let repeat = number("x-repeat").unwrap_or(1);
    let delay = Duration::from_millis(number("x-delay-ms").unwrap_or(0));
    let hold = header("x-hold").is_some();
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(2);
    tokio::spawn(async move {
        for i in 0..repeat {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if hold && i > 0 {
                release.notified().await;
            }
            if tx.send(Ok(Frame::data(frame(&message)))).await.is_err() {
                return;
            }
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("x-trailer-note", HeaderValue::from_static("done"));
        write_status(&mut trailers, fail.unwrap_or(0), details);
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    *response.body_mut() = StreamBody::new(stream).boxed_unsync();
    Ok(response)
}

fn boxed_body(chunks: Vec<Chunk>) -> http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible> {
    StreamBody::new(tokio_stream::iter(chunks)).boxed_unsync()
}

fn write_status(headers: &mut HeaderMap, code: i32, details: bool) {
    headers.insert("grpc-status", HeaderValue::from_str(&code.to_string()).unwrap());
    if code != 0 {
        headers.insert("grpc-message", HeaderValue::from_static("requested%20failure"));
    }
    if details && code != 0 {
        use base64::Engine;
        let status = RpcStatus {
            code,
            message: "requested failure".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: ErrorInfo {
                    reason: "TEST_REASON".into(),
                    domain: "test.example".into(),
                }
                .encode_to_vec(),
            }],
        };
        let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(status.encode_to_vec());
        headers.insert("grpc-status-details-bin", HeaderValue::from_str(&encoded).unwrap());
    }
}

#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

#[derive(Clone, PartialEq, Message)]
struct ErrorInfo {
    #[prost(string, tag = "1")]
    reason: String,
    #[prost(string, tag = "2")]
    domain: String,
}

fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

fn split_frames(mut bytes: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if bytes.len() < 5 + len {
            break;
        }
        out.push(Bytes::copy_from_slice(&bytes[5..5 + len]));
        bytes = &bytes[5 + len..];
    }
    out
}
