//! The stall limit for responses written by a host's server. grpc-edge's
//! own listener ends a response whose client has stopped reading at the
//! call's [`StallLimit`] (see `server::stall`); a host's server (axum,
//! hyper) does not know that limit, and stops polling the body while the
//! client reads nothing — so the call's own timers never run, and a
//! server stream keeps the backend's stream (and its sends) held for as
//! long as the client's connection lives.
//!
//! Here a stream's response body gets a watchdog task: when the limit
//! passes while the host's writer still holds the last frame (it has not
//! asked for another), the watchdog drops the call's body, which cancels
//! it upstream, and the writer's next poll gets an error, on which hyper
//! resets the stream (HTTP/2) or closes the connection (HTTP/1.1). A body
//! waiting for the backend is left to its own timers, which answer the
//! client with DEADLINE_EXCEEDED. Unary responses are not watched: a task
//! per call would cost more than the rare unary answer larger than the
//! client's window.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::Frame;

use crate::body::{Body, BoxError};
use crate::upstream::StallLimit;

/// How soon the watchdog looks again after a limit passed while the body
/// was waiting for the backend (whose own timers are about to end it).
const RECHECK: Duration = Duration::from_millis(100);

/// Gives a streaming response a watchdog; other responses pass unchanged.
pub(super) fn watch(response: Response<Body>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let limit = body.stall_limit().or_else(|| parts.extensions.remove::<StallLimit>());
    match limit {
        Some(limit) if limit.is_stream() && !http_body::Body::is_end_stream(&body) => {
            let shared = Arc::new(Shared {
                body: Mutex::new(Some(body)),
                writer_holds_frame: AtomicBool::new(false),
            });
            tokio::spawn(watchdog(Arc::downgrade(&shared), limit));
            Response::from_parts(parts, Body::new(Watched { shared }))
        }
        _ => Response::from_parts(parts, body),
    }
}

struct Shared {
    /// The call's body; taken (and dropped) by the watchdog.
    body: Mutex<Option<Body>>,
    /// The last poll returned a frame, and the writer has not polled since.
    writer_holds_frame: AtomicBool,
}

struct Watched {
    shared: Arc<Shared>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Ok(mut body) = self.shared.body.lock() else {
            return Poll::Ready(Some(Err("response body lock poisoned".into())));
        };
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(Some(Err(
                "the client read nothing past the call's deadline or stream_idle_timeout".into(),
            )));
        };
        let polled = Pin::new(inner).poll_frame(cx);
        self.shared
            .writer_holds_frame
            .store(matches!(polled, Poll::Ready(Some(Ok(_)))), Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.shared
            .body
            .lock()
            .map(|body| body.as_ref().is_none_or(http_body::Body::is_end_stream))
            .unwrap_or(true)
    }
}

/// Sleeps until the limit, and ends the call if the host's writer is still
/// sitting on its last frame then; ends when the response does.
async fn watchdog(shared: Weak<Shared>, limit: StallLimit) {
    loop {
        let Some(at) = limit.expires_at() else {
            return;
        };
        tokio::time::sleep_until(at).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if limit.expires_at().is_some_and(|at| at > tokio::time::Instant::now()) {
            continue; // messages moved since: the limit moved on
        }
        if !shared.writer_holds_frame.load(Ordering::Relaxed) {
            drop(shared);
            tokio::time::sleep(RECHECK).await;
            continue;
        }
        let body = shared.body.lock().ok().and_then(|mut body| body.take());
        if body.is_some() {
            tracing::debug!("the client read nothing past the call's limit; cancelling the call");
        }
        return;
    }
}
