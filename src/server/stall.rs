//! Ends responses whose client stopped reading them.
//!
//! A call's deadline and idle timeout are enforced by its response body,
//! which the server polls only when the client has room for more: a client
//! that reads nothing (a shut HTTP/2 window, a full TCP buffer on HTTP/1.1)
//! would hold the call, and the backend's stream, for as long as its
//! connection lives. The writers here wait for the client at most until
//! the call's [`StallLimit`]: HTTP/2 then resets the stream, HTTP/1.1
//! (which has no other way to end a response early) closes the connection.
//! Both drop the body, which cancels the call upstream.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::upstream::StallLimit;

/// A call's [`StallLimit`], and a timer armed only once a writer actually
/// waits for the client.
pub(super) struct StallTimer {
    limit: Option<StallLimit>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl StallTimer {
    pub(super) fn new(limit: Option<StallLimit>) -> Self {
        Self { limit, timer: None }
    }

    /// Starts judging a new wait by `limit`, keeping the timer's allocation.
    fn set_limit(&mut self, limit: Option<StallLimit>) {
        self.limit = limit;
    }

    /// Called while a write waits for the client: `Ready` once it has kept
    /// the response waiting past the limit; otherwise the timer wakes the
    /// task when it might have.
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(at) = self.limit.as_ref().and_then(StallLimit::expires_at) else {
                return Poll::Pending;
            };
            let timer = match &mut self.timer {
                Some(timer) => {
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    timer
                }
                None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
            };
            ready!(timer.as_mut().poll(cx));
            // The limit may have moved (a message went the other way) while
            // the timer ran: only a limit that is still past counts.
            if self
                .limit
                .as_ref()
                .and_then(StallLimit::expires_at)
                .is_none_or(|at| at <= Instant::now())
            {
                return Poll::Ready(());
            }
        }
    }
}

/// The limit of the response an HTTP/1.1 connection is writing: set by the
/// service as it answers each request, read by the connection's I/O.
#[derive(Clone, Default)]
pub(super) struct CurrentLimit(Arc<Mutex<Option<StallLimit>>>);

impl CurrentLimit {
    pub(super) fn set(&self, limit: Option<StallLimit>) {
        if let Ok(mut current) = self.0.lock() {
            *current = limit;
        }
    }

    fn get(&self) -> Option<StallLimit> {
        self.0.lock().ok().and_then(|current| current.clone())
    }
}

/// An HTTP/1.1 connection's I/O whose writes fail once they have waited for
/// the client past the current response's limit.
pub(super) struct StallGuard<IO> {
    io: IO,
    current: CurrentLimit,
    /// Judges a wait by the limit current when the wait began.
    timer: StallTimer,
    waiting: bool,
}

impl<IO> StallGuard<IO> {
    pub(super) fn new(io: IO, current: CurrentLimit) -> Self {
        Self {
            io,
            current,
            timer: StallTimer::new(None),
            waiting: false,
        }
    }

    /// Passes a write's result on; a write that waits counts toward the limit.
    fn after_write<T>(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.waiting = false;
            return result;
        }
        if !self.waiting {
            self.waiting = true;
            self.timer.set_limit(self.current.get());
        }
        match self.timer.poll_expired(cx) {
            Poll::Ready(()) => {
                tracing::debug!("client kept the response waiting past the call's limit; closing the connection");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client kept the response waiting past the call's deadline or idle timeout",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for StallGuard<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for StallGuard<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, data);
        this.after_write(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_flush(cx);
        this.after_write(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
