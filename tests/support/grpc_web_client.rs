//! A gRPC-Web test client (tests/grpc_web.rs, tests/cors.rs): HTTP/1.1 or
//! HTTP/2 connections to the gateway, binary or text encoding, frame by frame.

#![allow(dead_code, unreachable_pub, clippy::all)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::*;

/// The HTTP version a test client speaks to the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Http1,
    Http2,
}

/// Both transports, for tests that cover each.
pub const TRANSPORTS: [Transport; 2] = [Transport::Http1, Transport::Http2];

/// How a gRPC-Web body is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebEncoding {
    Binary,
    Text,
}

/// Both encodings, for tests that cover each.
pub const ENCODINGS: [WebEncoding; 2] = [WebEncoding::Binary, WebEncoding::Text];

impl WebEncoding {
    pub fn content_type(self) -> &'static str {
        match self {
            WebEncoding::Binary => "application/grpc-web+proto",
            WebEncoding::Text => "application/grpc-web-text+proto",
        }
    }

    /// Encodes frames as a client sends them (text: base64, padded).
    pub fn encode(self, frames: &[u8]) -> Bytes {
        use base64::Engine;
        match self {
            WebEncoding::Binary => Bytes::copy_from_slice(frames),
            WebEncoding::Text => Bytes::from(base64::engine::general_purpose::STANDARD.encode(frames)),
        }
    }
}

/// A request body for the test clients.
pub type WebBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A body of one buffered chunk (its length is known, so HTTP/1.1 sends `content-length`).
pub fn full_body(bytes: impl Into<Bytes>) -> WebBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes.into()).boxed()
}

/// A body sent as separate chunks with a pause before each (HTTP/1.1: chunked encoding).
pub fn chunked_body(chunks: Vec<Bytes>, gap: Duration) -> WebBody {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    tokio::spawn(async move {
        for chunk in chunks {
            tokio::time::sleep(gap).await;
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    let frames = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|chunk| Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk)));
    http_body_util::StreamBody::new(frames).boxed()
}

/// One client connection to the gateway, HTTP/1.1 or HTTP/2 (h2c, prior knowledge).
pub struct HttpConn {
    addr: SocketAddr,
    sender: HttpSender,
}

enum HttpSender {
    Http1(hyper::client::conn::http1::SendRequest<WebBody>),
    Http2(hyper::client::conn::http2::SendRequest<WebBody>),
}

/// How long a test waits for the gateway before calling it stuck.
pub const PATIENCE: Duration = Duration::from_secs(10);

impl HttpConn {
    pub async fn connect(addr: SocketAddr, transport: Transport) -> HttpConn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = tcp.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(tcp);
        let sender = match transport {
            Transport::Http1 => {
                let (sender, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(connection);
                HttpSender::Http1(sender)
            }
            Transport::Http2 => {
                let (sender, connection) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(connection);
                HttpSender::Http2(sender)
            }
        };
        HttpConn { addr, sender }
    }

    pub fn transport(&self) -> Transport {
        match self.sender {
            HttpSender::Http1(_) => Transport::Http1,
            HttpSender::Http2(_) => Transport::Http2,
        }
    }

    /// A request for `path` in the form this transport uses.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: WebBody) -> http::Request<WebBody> {
        let uri = match self.transport() {
            Transport::Http1 => path.to_string(),
            Transport::Http2 => format!("http://{}{path}", self.addr),
        };
        let mut request = http::Request::builder().method(method).uri(uri);
        if self.transport() == Transport::Http1 {
            request = request.header("host", self.addr.to_string());
        }
        let mut request = request.body(body).unwrap();
        for (name, value) in headers {
            request.headers_mut().append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                http::HeaderValue::from_str(value).unwrap(),
            );
        }
        request
    }

    /// Sends a request; panics if the gateway does not answer in time.
    pub async fn send(&mut self, request: http::Request<WebBody>) -> http::Response<hyper::body::Incoming> {
        let sent = async {
            match &mut self.sender {
                HttpSender::Http1(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
                HttpSender::Http2(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await
                }
            }
        };
        tokio::time::timeout(PATIENCE, sent)
            .await
            .expect("the gateway did not answer: stuck connection?")
            .expect("request failed")
    }

    /// Sends a request and reads the whole answer.
    pub async fn exchange(&mut self, request: http::Request<WebBody>) -> HttpReply {
        use http_body_util::BodyExt;
        let (parts, body) = self.send(request).await.into_parts();
        let body = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .expect("the answer's body did not end: stuck connection?")
            .expect("answer body failed")
            .to_bytes();
        HttpReply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// A whole plain HTTP answer.
#[derive(Debug)]
pub struct HttpReply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// One frame of a gRPC-Web response.
#[derive(Debug)]
pub enum WebFrame {
    Message(Bytes),
    Trailers(http::HeaderMap),
}

/// A gRPC-Web client over one connection, in one encoding.
pub struct WebClient {
    pub conn: HttpConn,
    pub encoding: WebEncoding,
}

impl WebClient {
    pub async fn connect(addr: SocketAddr, transport: Transport, encoding: WebEncoding) -> WebClient {
        WebClient {
            conn: HttpConn::connect(addr, transport).await,
            encoding,
        }
    }

    /// Starts a call with a body exactly as given; `headers` are added to (and
    /// may replace) the gRPC-Web ones.
    pub async fn start_raw(&mut self, path: &str, headers: &[(&str, &str)], body: WebBody) -> WebStream {
        let mut all = vec![
            ("content-type", self.encoding.content_type()),
            ("x-grpc-web", "1"),
            ("x-user-agent", "grpc-web-rust-test/0.1"),
        ];
        all.retain(|(name, _)| !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)));
        all.extend_from_slice(headers);
        let request = self.conn.request("POST", path, &all, body);
        WebStream::new(self.conn.send(request).await)
    }

    /// Starts a call sending one message.
    pub async fn start(&mut self, path: &str, headers: &[(&str, &str)], message: &impl prost::Message) -> WebStream {
        let body = full_body(self.encoding.encode(&grpc_frame(message)));
        self.start_raw(path, headers, body).await
    }

    /// A whole call sending one message.
    pub async fn call(&mut self, path: &str, headers: &[(&str, &str)], message: &impl prost::Message) -> WebReply {
        self.start(path, headers, message).await.finish().await
    }

    pub async fn unary(&mut self, request: EchoRequest) -> WebReply {
        self.call("/testing.v1.Echo/Unary", &[], &request).await
    }

    pub async fn server_stream(&mut self, request: EchoRequest) -> WebReply {
        self.call("/testing.v1.Echo/ServerStream", &[], &request).await
    }
}

/// A gRPC-Web response being read frame by frame.
pub struct WebStream {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    body: hyper::body::Incoming,
    text: bool,
    /// Body bytes received and not yet decoded (text mode: base64).
    pending: Vec<u8>,
    /// Decoded bytes not yet parsed into frames.
    decoded: Vec<u8>,
    /// Every body chunk as it arrived on the wire.
    pub chunks: Vec<Bytes>,
    /// The body ended.
    ended: bool,
    /// The trailer frame was read: nothing may follow it.
    saw_trailers: bool,
}

impl WebStream {
    fn new(response: http::Response<hyper::body::Incoming>) -> WebStream {
        let (parts, body) = response.into_parts();
        let text = parts
            .headers
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web-text"));
        WebStream {
            status: parts.status,
            headers: parts.headers,
            body,
            text,
            pending: Vec::new(),
            decoded: Vec::new(),
            chunks: Vec::new(),
            ended: false,
            saw_trailers: false,
        }
    }

    /// The next frame, `None` at the end of the body; panics on a malformed body.
    pub async fn next_frame(&mut self) -> Option<WebFrame> {
        use http_body_util::BodyExt;
        loop {
            if let Some(frame) = self.parse_frame() {
                assert!(!self.saw_trailers, "a frame after the trailer frame");
                if let WebFrame::Trailers(_) = frame {
                    self.saw_trailers = true;
                }
                return Some(frame);
            }
            if self.ended {
                assert!(self.decoded.is_empty(), "body ends inside a frame: {:?}", self.decoded);
                assert!(self.pending.is_empty(), "body ends inside base64: {:?}", self.pending);
                return None;
            }
            let next = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("the response stalled: stuck connection?");
            match next {
                None => self.ended = true,
                Some(frame) => {
                    let frame = frame.expect("response body failed");
                    let Ok(data) = frame.into_data() else {
                        panic!("gRPC-Web responses carry no HTTP trailers");
                    };
                    self.chunks.push(data.clone());
                    self.pending.extend_from_slice(&data);
                    self.decode_pending();
                }
            }
        }
    }

    fn decode_pending(&mut self) {
        if !self.text {
            self.decoded.append(&mut self.pending);
            return;
        }
        // Whole 4-character groups; padding may end any group (each chunk is padded).
        let whole = self.pending.len() / 4 * 4;
        let groups: Vec<u8> = self.pending.drain(..whole).collect();
        self.decoded.extend_from_slice(&decode_base64_groups(&groups));
    }

    fn parse_frame(&mut self) -> Option<WebFrame> {
        if self.decoded.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes(self.decoded[1..5].try_into().unwrap()) as usize;
        if self.decoded.len() < 5 + len {
            return None;
        }
        let flags = self.decoded[0];
        let frame: Vec<u8> = self.decoded.drain(..5 + len).collect();
        let payload = Bytes::copy_from_slice(&frame[5..]);
        Some(if flags & 0x80 != 0 {
            WebFrame::Trailers(parse_web_trailers(&payload))
        } else {
            assert_eq!(flags, 0, "unexpected frame flags");
            WebFrame::Message(payload)
        })
    }

    /// Reads to the end.
    pub async fn finish(mut self) -> WebReply {
        let mut messages = Vec::new();
        let mut trailers = None;
        while let Some(frame) = self.next_frame().await {
            match frame {
                WebFrame::Message(message) => messages.push(message),
                WebFrame::Trailers(t) => trailers = Some(t),
            }
        }
        WebReply {
            status: self.status,
            headers: self.headers,
            messages,
            trailers,
            chunks: self.chunks,
        }
    }
}

/// Decodes base64 made of whole groups, any of which may end in padding.
pub fn decode_base64_groups(text: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let engine = &base64::engine::general_purpose::STANDARD;
    assert_eq!(text.len() % 4, 0, "not whole base64 groups: {text:?}");
    let mut out = Vec::new();
    let mut start = 0;
    for group in (0..text.len()).step_by(4) {
        if text[group..group + 4].contains(&b'=') {
            out.extend(engine.decode(&text[start..group + 4]).expect("invalid base64"));
            start = group + 4;
        }
    }
    out.extend(engine.decode(&text[start..]).expect("invalid base64"));
    out
}

/// Parses a trailer frame's `key:value\r\n` lines, insisting on lower-case keys.
pub fn parse_web_trailers(block: &[u8]) -> http::HeaderMap {
    let text = std::str::from_utf8(block).expect("trailers are ASCII");
    assert!(
        text.is_empty() || text.ends_with("\r\n"),
        "trailer lines end in CRLF: {text:?}"
    );
    let mut trailers = http::HeaderMap::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').expect("trailer line without a colon");
        assert_eq!(name, name.to_ascii_lowercase(), "trailer keys are lower-case");
        trailers.append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            http::HeaderValue::from_str(value.trim_start()).unwrap(),
        );
    }
    trailers
}

/// A whole gRPC-Web response.
#[derive(Debug)]
pub struct WebReply {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub messages: Vec<Bytes>,
    /// The trailer frame; `None` for a trailers-only response.
    pub trailers: Option<http::HeaderMap>,
    /// The body chunks as they arrived.
    pub chunks: Vec<Bytes>,
}

impl WebReply {
    /// `grpc-status` from the trailer frame, or from the headers (trailers-only).
    pub fn grpc_status(&self) -> Option<String> {
        self.status_field("grpc-status")
    }

    /// `grpc-message`, percent-decoded as a gRPC client does.
    pub fn grpc_message(&self) -> String {
        let raw = self.status_field("grpc-message").unwrap_or_default();
        let bytes = raw.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(byte) if bytes[i] == b'%' => {
                    out.push(byte);
                    i += 3;
                }
                _ => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn status_field(&self, name: &str) -> Option<String> {
        let from = |h: &http::HeaderMap| h.get(name).map(|v| v.to_str().unwrap().to_string());
        self.trailers.as_ref().and_then(from).or_else(|| from(&self.headers))
    }

    /// Trailers-only: the status in the headers, an empty body.
    pub fn is_trailers_only(&self) -> bool {
        self.trailers.is_none() && self.messages.is_empty() && self.headers.contains_key("grpc-status")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn responses(&self) -> Vec<EchoResponse> {
        self.messages
            .iter()
            .map(|m| <EchoResponse as prost::Message>::decode(m.clone()).unwrap())
            .collect()
    }
}
