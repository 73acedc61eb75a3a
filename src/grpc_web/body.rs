//! The two bodies of a gRPC-Web call.
//!
//! `RequestBody` turns the browser's body into the gRPC frame stream the
//! upstream receives: binary bodies pass through chunk by chunk (the same
//! `Bytes`), text bodies are base64-decoded as they stream; either way the
//! frame scanner checks each length prefix against the limit as it passes.
//! A malformed body fails the upstream stream (which resets it) and records
//! the status the client must see in a shared [`Fault`], so the handler can
//! answer with it instead of the reset the upstream reports.
//!
//! `ResponseBody` turns the upstream's response into gRPC-Web: data chunks
//! are passed on as they arrive (base64-encoded one by one in text mode) and
//! the HTTP/2 trailers become the final trailer frame. Messages are never
//! decoded in either direction.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::Encoding;
use super::codec::{FrameScanner, RequestError, encode_trailers};
use super::text::{Base64Decoder, encode_chunk};
use crate::body::{Body, BoxError};
use crate::status::{Code, Status};

/// The status a malformed request body earned, shared by the request body
/// (which sets it) and the handler and response body (which report it).
#[derive(Clone, Debug, Default)]
pub(crate) struct Fault(Arc<OnceLock<Status>>);

impl Fault {
    fn set(&self, status: Status) {
        // The first fault is the one reported; a body fails at most once.
        let _ = self.0.set(status);
    }

    /// The status, if the request body was refused.
    pub(crate) fn get(&self) -> Option<&Status> {
        self.0.get()
    }
}

/// How the request body's bytes become frame bytes.
enum Decoding {
    Binary,
    Text(Base64Decoder),
}

/// Whether a body has more to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    Streaming,
    Done,
}

/// The request body sent upstream: the client's frames, decoded from base64
/// in text mode, with every frame header checked.
pub(crate) struct RequestBody {
    inner: Body,
    decoding: Decoding,
    scanner: FrameScanner,
    fault: Fault,
    progress: Progress,
}

impl RequestBody {
    pub(crate) fn new(inner: Body, encoding: Encoding, limit: usize, fault: Fault) -> Self {
        let decoding = match encoding {
            Encoding::Binary => Decoding::Binary,
            Encoding::Text => Decoding::Text(Base64Decoder::default()),
        };
        Self {
            inner,
            decoding,
            scanner: FrameScanner::new(limit),
            fault,
            progress: Progress::Streaming,
        }
    }

    /// Decodes (text mode) and checks one chunk of the client's body.
    fn accept(&mut self, data: Bytes) -> Result<Bytes, RequestError> {
        let data = match &mut self.decoding {
            Decoding::Binary => data,
            Decoding::Text(decoder) => decoder.decode(&data)?,
        };
        self.scanner.scan(&data)?;
        Ok(data)
    }

    /// The client's body ended: the last base64 group, then the frame checks.
    fn end(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let tail = match &mut self.decoding {
            Decoding::Binary => Ok(Bytes::new()),
            Decoding::Text(decoder) => decoder.finish(),
        };
        let checked = tail.and_then(|tail| {
            self.scanner.scan(&tail)?;
            self.scanner.finish()?;
            Ok(tail)
        });
        match checked {
            Ok(tail) => {
                self.progress = Progress::Done;
                Poll::Ready((!tail.is_empty()).then(|| Ok(Frame::data(tail))))
            }
            Err(error) => self.fail(error),
        }
    }

    fn fail(&mut self, error: RequestError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        tracing::debug!(%error, "gRPC-Web request body refused");
        self.progress = Progress::Done;
        let mut status = error.status();
        if let (Decoding::Text(_), RequestError::Frame(_) | RequestError::Flags { .. }) = (&self.decoding, &error) {
            status.message.push_str(" (offsets count decoded bytes)");
        }
        self.fault.set(status);
        Poll::Ready(Some(Err(error.into())))
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.progress == Progress::Done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => match this.accept(data) {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Err(error) => return this.fail(error),
                    },
                    // gRPC-Web requests carry no trailers: the body ends here.
                    Err(_) => return this.end(),
                },
                Some(Err(error)) => {
                    this.progress = Progress::Done;
                    return Poll::Ready(Some(Err(error)));
                }
                None => return this.end(),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Claim the end only when the checks at the end cannot fail, so the
        // upstream stream can end with the last data frame.
        let idle = match &self.decoding {
            Decoding::Binary => true,
            Decoding::Text(decoder) => decoder.is_idle(),
        };
        self.progress == Progress::Done || (self.inner.is_end_stream() && idle && self.scanner.at_clean_end())
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The response body sent to the client: the upstream's frames as they
/// arrive, then its trailers as the gRPC-Web trailer frame.
pub(crate) struct ResponseBody {
    inner: Body,
    encoding: Encoding,
    fault: Fault,
    progress: Progress,
}

impl ResponseBody {
    pub(crate) fn new(inner: Body, encoding: Encoding, fault: Fault) -> Self {
        Self {
            inner,
            encoding,
            fault,
            progress: Progress::Streaming,
        }
    }

    fn wrap(&self, data: Bytes) -> Bytes {
        match self.encoding {
            Encoding::Binary => data,
            Encoding::Text => encode_chunk(&data),
        }
    }

    /// The last frame: the upstream's trailers, or the request's fault.
    fn end(&mut self, trailers: HeaderMap) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.progress = Progress::Done;
        let frame = match self.fault.get() {
            Some(status) => encode_trailers(&status.to_trailers()),
            None => encode_trailers(&trailers),
        };
        Poll::Ready(Some(Ok(Frame::data(self.wrap(frame)))))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.progress == Progress::Done {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Poll::Ready(Some(Ok(Frame::data(this.wrap(data))))),
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => return this.end(trailers),
                        Err(_) => continue,
                    },
                },
                Some(Err(error)) => {
                    let status = Status::new(Code::Unavailable, format!("upstream response failed: {error}"));
                    return this.end(status.to_trailers());
                }
                None => {
                    let status = Status::new(Code::Internal, "upstream response ended without a grpc-status");
                    return this.end(status.to_trailers());
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.progress == Progress::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use http_body::Body as _;
    use http_body_util::BodyExt;

    use super::*;
    use crate::grpc_frame::HEADER_LEN;

    /// Every frame of a body: data chunks, then trailers or the error that ended it.
    async fn drain<B>(mut body: B) -> (Vec<Bytes>, Option<HeaderMap>, Option<BoxError>)
    where
        B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
    {
        let (mut chunks, mut trailers) = (Vec::new(), None);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => chunks.push(data),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                Err(error) => return (chunks, trailers, Some(error)),
            }
        }
        (chunks, trailers, None)
    }

    fn chunks(pieces: &[&'static [u8]]) -> Body {
        Body::from_chunks(pieces.iter().map(|p| Bytes::from_static(p)).collect(), None)
    }

    #[tokio::test]
    async fn binary_request_chunks_pass_through_as_the_same_bytes() {
        let frame = Bytes::from_static(b"\x00\x00\x00\x00\x02hi");
        let inner = Body::from_chunks(vec![frame.slice(..3), frame.slice(3..)], None);
        let body = RequestBody::new(inner, Encoding::Binary, 16, Fault::default());
        let (out, _, error) = drain(body).await;
        assert!(error.is_none());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ptr(), frame.as_ptr(), "not copied");
        assert_eq!(out[1].as_ptr(), frame[3..].as_ptr(), "not copied");
    }

    #[tokio::test]
    async fn the_request_body_ends_with_its_last_whole_frame() {
        let mut body = RequestBody::new(
            chunks(&[b"\x00\x00\x00\x00\x01", b"a"]),
            Encoding::Binary,
            16,
            Fault::default(),
        );
        assert!(!body.is_end_stream());
        body.frame().await.unwrap().unwrap();
        assert!(!body.is_end_stream(), "inside a frame");
        body.frame().await.unwrap().unwrap();
        assert!(body.is_end_stream(), "a whole frame and nothing left");
    }

    #[tokio::test]
    async fn a_text_request_is_decoded_as_it_streams() {
        let inner = chunks(&[b"AAAAAA", b"Vo", b"ZWxsbw", b"==AAAA", b"AAA="]);
        let fault = Fault::default();
        let (out, trailers, error) = drain(RequestBody::new(inner, Encoding::Text, 16, fault.clone())).await;
        assert!(error.is_none() && trailers.is_none() && fault.get().is_none());
        assert_eq!(out.concat(), b"\x00\x00\x00\x00\x05hello\x00\x00\x00\x00\x00");
    }

    #[tokio::test]
    async fn a_malformed_request_fails_the_body_and_records_the_fault() {
        for (encoding, pieces, code) in [
            (Encoding::Text, &[&b"AAAA"[..], b"A?AA"][..], Code::InvalidArgument),
            (
                Encoding::Binary,
                &[&b"\x00\x00\x00\x00\x09abc"[..]][..],
                Code::InvalidArgument,
            ),
            (
                Encoding::Binary,
                &[&b"\x00\x00\x00\x01\x00"[..]][..],
                Code::ResourceExhausted,
            ),
            (Encoding::Binary, &[&b""[..]][..], Code::InvalidArgument),
        ] {
            let inner = Body::from_chunks(pieces.iter().map(|p| Bytes::from(*p)).collect(), None);
            let fault = Fault::default();
            let (_, _, error) = drain(RequestBody::new(inner, encoding, 16, fault.clone())).await;
            assert!(error.is_some(), "{pieces:?}");
            assert_eq!(fault.get().map(|s| s.code), Some(code), "{pieces:?}");
        }
    }

    fn upstream(data: &[&'static [u8]], trailers: Option<HeaderMap>) -> Body {
        Body::from_chunks(data.iter().map(|d| Bytes::from_static(d)).collect(), trailers)
    }

    #[tokio::test]
    async fn response_data_passes_through_and_trailers_become_the_last_frame() {
        let data = Bytes::from_static(b"\x00\x00\x00\x00\x01z");
        let trailers = Status::new(Code::Ok, "").to_trailers();
        let inner = Body::from_chunks(vec![data.clone()], Some(trailers));
        let body = ResponseBody::new(inner, Encoding::Binary, Fault::default());
        let (out, http_trailers, error) = drain(body).await;
        assert!(error.is_none() && http_trailers.is_none(), "trailers go in the body");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ptr(), data.as_ptr(), "not copied");
        assert_eq!(&out[1][..], b"\x80\x00\x00\x00\x0fgrpc-status:0\r\n");
    }

    #[tokio::test]
    async fn text_response_chunks_are_each_valid_base64() {
        let inner = upstream(&[b"\x00\x00\x00", b"\x00\x01z"], Some(HeaderMap::new()));
        let (out, _, _) = drain(ResponseBody::new(inner, Encoding::Text, Fault::default())).await;
        let text: Vec<&[u8]> = out.iter().map(|c| &c[..]).collect();
        assert_eq!(text, [&b"AAAA"[..], b"AAF6", b"gAAAAAA="]);
    }

    #[tokio::test]
    async fn a_fault_or_a_missing_status_decides_the_trailer_frame() {
        let fault = Fault::default();
        fault.set(Status::new(Code::InvalidArgument, "bad"));
        let ok = Some(Status::new(Code::Ok, "").to_trailers());
        let (out, _, _) = drain(ResponseBody::new(upstream(&[], ok), Encoding::Binary, fault)).await;
        assert_eq!(&out[0][HEADER_LEN..], b"grpc-status:3\r\ngrpc-message:bad\r\n");

        let (out, _, _) = drain(ResponseBody::new(
            upstream(&[b"\x00\x00\x00\x00\x00"], None),
            Encoding::Binary,
            Fault::default(),
        ))
        .await;
        let last = &out[out.len() - 1];
        assert_eq!(last[0], super::super::codec::TRAILER_FLAG);
        let lines = std::str::from_utf8(&last[HEADER_LEN..]).unwrap();
        assert!(lines.starts_with("grpc-status:13\r\n"), "{lines}");
    }
}
