//! The one body type that flows through the gateway, in both directions.
//!
//! Front ends wrap what their server gives them (an h2 stream, a hyper body,
//! an axum body) and the upstream side yields its own streaming body; an enum
//! keeps every variant unboxed on the hot path and lets a handler return any
//! of them. Data is always `Bytes`, handed on without copying.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};

use crate::telemetry::Observer;
use crate::upstream::{StallLimit, UpstreamBody};

/// Errors a body can yield; they end the exchange (an HTTP/2 stream is reset).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body, for anything that is not one of the built-in variants.
pub(crate) type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A request or response body.
pub struct Body {
    kind: Kind,
    /// Telemetry watching this body's frames, when the call is measured.
    observer: Option<Observer>,
}

enum Kind {
    Empty,
    /// Buffered data chunks, then optional trailers.
    Buffered {
        chunks: std::collections::VecDeque<Bytes>,
        trailers: Option<Box<HeaderMap>>,
    },
    /// An HTTP/2 stream accepted by the gateway's own server.
    H2 {
        recv: h2::RecvStream,
        data_done: bool,
    },
    /// A body from hyper's HTTP/1.1 server.
    Hyper(hyper::body::Incoming),
    /// A call's response from an upstream endpoint.
    Upstream(Box<UpstreamBody>),
    /// Anything else.
    Boxed(BoxBody),
}

impl Body {
    /// A body with no data and no trailers.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Empty,
            observer: None,
        }
    }

    /// A body of one chunk.
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        if data.is_empty() {
            return Self::empty();
        }
        Self::from_chunks(vec![data], None)
    }

    /// Data chunks followed by optional trailers.
    pub fn from_chunks(chunks: Vec<Bytes>, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::Buffered {
                chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
                trailers: trailers.map(Box::new),
            },
            observer: None,
        }
    }

    /// Wraps an HTTP/2 stream; received data is acknowledged (flow control) as it is read.
    pub(crate) fn h2(recv: h2::RecvStream) -> Self {
        let data_done = recv.is_end_stream();
        Self {
            kind: Kind::H2 { recv, data_done },
            observer: None,
        }
    }

    /// Wraps hyper's incoming body.
    pub fn hyper(incoming: hyper::body::Incoming) -> Self {
        Self {
            kind: Kind::Hyper(incoming),
            observer: None,
        }
    }

    pub(crate) fn upstream(body: UpstreamBody) -> Self {
        Self {
            kind: Kind::Upstream(Box::new(body)),
            observer: None,
        }
    }

    /// How long this body may wait for the client to read it, when it is a
    /// call's response from an upstream (see [`StallLimit`]).
    pub(crate) fn stall_limit(&self) -> Option<StallLimit> {
        match &self.kind {
            Kind::Upstream(upstream) => Some(upstream.stall_limit()),
            _ => None,
        }
    }

    /// Wraps any other body.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Self {
            kind: Kind::Boxed(body.map_err(Into::into).boxed_unsync()),
            observer: None,
        }
    }
}

impl Body {
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Buffered { chunks, trailers } => match chunks.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t)))),
            },
            Kind::H2 { recv, data_done } => {
                if !*data_done {
                    match ready!(recv.poll_data(cx)) {
                        Some(Ok(data)) => {
                            // Acknowledge at once: the consumer holds at most this chunk,
                            // and the peer's window is what bounds memory.
                            let _ = recv.flow_control().release_capacity(data.len());
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => *data_done = true,
                    }
                }
                match ready!(recv.poll_trailers(cx)) {
                    Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                    Ok(None) => Poll::Ready(None),
                    Err(e) => Poll::Ready(Some(Err(e.into()))),
                }
            }
            Kind::Hyper(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Kind::Upstream(body) => body.poll_frame(cx).map(|f| f.map(Ok)),
            Kind::Boxed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    /// Lets telemetry watch this body's frames.
    pub(crate) fn observe(&mut self, observer: Observer) {
        self.observer = Some(observer);
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Empty => "empty",
            Kind::Buffered { .. } => "buffered",
            Kind::H2 { .. } => "h2",
            Kind::Hyper(_) => "hyper",
            Kind::Upstream(_) => "upstream",
            Kind::Boxed(_) => "boxed",
        };
        f.debug_tuple("Body").field(&kind).finish()
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = self.poll_inner(cx);
        if let Some(observer) = &mut self.observer {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        observer.data(data);
                    } else if let Some(trailers) = frame.trailers_ref() {
                        observer.trailers(trailers);
                    }
                }
                Poll::Ready(None) => {
                    observer.end();
                    self.observer = None;
                }
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Buffered { chunks, trailers } => chunks.is_empty() && trailers.is_none(),
            Kind::H2 { recv, .. } => recv.is_end_stream(),
            Kind::Hyper(incoming) => incoming.is_end_stream(),
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Boxed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Buffered { chunks, .. } => SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum()),
            Kind::H2 { .. } | Kind::Upstream(_) => SizeHint::default(),
            Kind::Hyper(incoming) => incoming.size_hint(),
            Kind::Boxed(body) => body.size_hint(),
        }
    }
}
