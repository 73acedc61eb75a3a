//! Serves HTTP/2 connections with the h2 crate directly: one task per
//! connection and one per stream, and the stream task both runs the call and
//! writes its response, so a proxied call costs no extra task or channel hop.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::Limits;
use super::stall::StallTimer;
use crate::body::Body;
use crate::gateway::{ConnInfo, Gateway};
use crate::upstream::StallLimit;

/// Serves one HTTP/2 connection until the client closes it or a graceful
/// shutdown (GOAWAY) has let every stream finish.
pub(crate) async fn serve<IO>(
    io: IO,
    gateway: Gateway,
    info: Arc<ConnInfo>,
    limits: Arc<Limits>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .max_send_buffer_size(limits.max_send_buffer)
        // Clients cancel calls in bursts (a load generator stopping cancels
        // all its calls); that is not an attack, so allow many resets.
        .max_pending_accept_reset_streams(1024)
        .max_concurrent_reset_streams(1024)
        .handshake::<_, Bytes>(io);
    let mut connection = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("HTTP/2 handshake timed out");
            return;
        }
    };
    let mut draining = *shutdown.borrow();
    if draining {
        connection.graceful_shutdown();
    }
    // Idle for a whole period: no stream task alive (each holds a clone of
    // `info`) at the last check nor now, and none accepted in between.
    // Counting accepts costs the hot path nothing; the price is closing
    // after one to two idle periods.
    let period = match limits.idle_timeout {
        Duration::ZERO => Duration::from_secs(86_400 * 365),
        idle => idle,
    };
    let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let (mut accepted, mut accepted_at_check, mut idle_at_check) = (0u64, 0u64, false);
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    accepted += 1;
                    // Boxed: the task then holds a pointer, and the call's large
                    // state machine is not copied again as the task starts and ends.
                    tokio::spawn(Box::pin(serve_stream(gateway.clone(), info.clone(), request, respond)));
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "HTTP/2 connection error");
                    break;
                }
                None => break,
            },
            changed = shutdown.changed(), if !draining => {
                draining = true;
                if changed.is_ok() {
                    connection.graceful_shutdown();
                }
            }
            _ = idle_check.tick(), if !draining => {
                let idle = Arc::strong_count(&info) == 1;
                if idle && idle_at_check && accepted == accepted_at_check {
                    tracing::debug!(idle_timeout = ?limits.idle_timeout, "closing an idle HTTP/2 connection");
                    draining = true;
                    connection.graceful_shutdown();
                }
                accepted_at_check = accepted;
                idle_at_check = idle;
            }
        }
    }
}

async fn serve_stream(
    gateway: Gateway,
    info: Arc<ConnInfo>,
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let request = request.map(Body::h2);
    let handled = gateway.handle(request, &info);
    tokio::pin!(handled);
    let response = tokio::select! {
        biased;
        response = &mut handled => response,
        // The client reset the stream before the answer: drop the call, which
        // cancels it upstream.
        _ = poll_fn(|cx| respond.poll_reset(cx)) => return,
    };
    write_response(response, respond).await;
}

/// Writes a response on an HTTP/2 stream, honouring flow control, and stops
/// (dropping the body, which cancels an upstream call) if the client resets,
/// or resets the stream itself once the client has kept it waiting for
/// window past the call's limit (see [`super::stall`]).
pub(crate) async fn write_response(response: Response<Body>, mut respond: h2::server::SendResponse<Bytes>) {
    let (mut parts, mut body) = response.into_parts();
    // An upstream body knows its limit; front ends that wrap one carry it
    // as an extension (looked up only then: native answers skip the map).
    let mut stall = StallTimer::new(body.stall_limit().or_else(|| parts.extensions.remove::<StallLimit>()));
    let end_of_stream = body.is_end_stream();
    let mut send = match respond.send_response(Response::from_parts(parts, ()), end_of_stream) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(error = %e, "could not send response headers");
            return;
        }
    };
    if end_of_stream {
        return;
    }
    let mut pending: Option<Bytes> = None;
    poll_fn(|cx| poll_write_body(&mut body, &mut send, &mut pending, &mut stall, cx)).await;
}

fn poll_write_body(
    body: &mut Body,
    send: &mut h2::SendStream<Bytes>,
    pending: &mut Option<Bytes>,
    stall: &mut StallTimer,
    cx: &mut Context<'_>,
) -> Poll<()> {
    loop {
        if let Some(data) = pending.take() {
            send.reserve_capacity(data.len());
            if send.capacity() == 0 {
                loop {
                    match send.poll_capacity(cx) {
                        Poll::Pending => {
                            *pending = Some(data);
                            // The client reads nothing: the call's body is not
                            // polled, so its timers cannot end it; this does.
                            if stall.poll_expired(cx).is_ready() {
                                tracing::debug!("client kept the response waiting past the call's limit; resetting");
                                send.send_reset(h2::Reason::CANCEL);
                                return Poll::Ready(());
                            }
                            return match send.poll_reset(cx) {
                                Poll::Ready(_) => Poll::Ready(()),
                                Poll::Pending => Poll::Pending,
                            };
                        }
                        Poll::Ready(Some(Ok(0))) => continue,
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(()),
                    }
                }
            }
            let end = body.is_end_stream();
            if send.send_data(data, end).is_err() || end {
                return Poll::Ready(());
            }
            continue;
        }
        match std::pin::Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => {
                return match send.poll_reset(cx) {
                    Poll::Ready(_) => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                };
            }
            Poll::Ready(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return Poll::Ready(());
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    if !data.is_empty() {
                        *pending = Some(data);
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                        return Poll::Ready(());
                    }
                }
            },
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
        }
    }
}
