//! Serves HTTP/2 connections with the h2 crate directly: one task per
//! connection and one per stream, and the stream task both runs the call and
//! writes its response, so a proxied call costs no extra task or channel hop.
//! Stream tasks report the client's early resets to the connection task,
//! which closes a connection abusing them (see [`super::resets`]).

use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::Limits;
use super::resets::{self, EarlyResets};
use super::stall::StallTimer;
use crate::body::Body;
use crate::gateway::{ConnInfo, Gateway};
use crate::upstream::StallLimit;

/// Serves one HTTP/2 connection until the client closes it or a graceful
/// shutdown (GOAWAY) has let every stream finish.
pub(crate) async fn serve<IO>(
    mut io: IO,
    gateway: Gateway,
    info: Arc<ConnInfo>,
    limits: Arc<Limits>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let connection_state = Arc::new(Connection {
        info,
        early_resets: EarlyResets::new(limits.premature_reset_min_lifetime),
    });
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
        // Lent, not given: the socket outlives the HTTP/2 session (see `linger`).
        .handshake::<_, Bytes>(&mut io);
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
    // `connection_state`) at the last check nor now, and none accepted in between.
    // Counting accepts costs the hot path nothing; the price is closing
    // after one to two idle periods.
    let period = match limits.idle_timeout {
        Duration::ZERO => super::NEVER,
        idle => idle,
    };
    let mut idle_check = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let retire = tokio::time::sleep_until(super::connection_retirement(&limits));
    tokio::pin!(retire);
    let (mut accepted, mut accepted_at_check, mut idle_at_check) = (0u64, 0u64, false);
    let mut calmed = false;
    loop {
        tokio::select! {
            next = connection.accept() => match next {
                Some(Ok((request, respond))) => {
                    accepted += 1;
                    // Boxed: the task then holds a pointer, and the call's large
                    // state machine is not copied again as the task starts and ends.
                    tokio::spawn(Box::pin(serve_stream(gateway.clone(), connection_state.clone(), request, respond)));
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
            early = connection_state.early_resets.next(), if !calmed => {
                if resets::too_many(early, accepted, limits.premature_reset_streams) {
                    tracing::warn!(
                        client = ?connection_state.info.remote,
                        early_resets = early,
                        streams = accepted,
                        "closing a client connection that reset most of its streams early (rapid reset)"
                    );
                    gateway.note_premature_reset_close();
                    calmed = true;
                    draining = true;
                    connection.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                }
            }
            () = &mut retire, if !draining => {
                tracing::debug!(max_connection_age = ?limits.max_connection_age, "retiring an old HTTP/2 connection");
                draining = true;
                connection.graceful_shutdown();
            }
            _ = idle_check.tick(), if !draining => {
                let idle = Arc::strong_count(&connection_state) == 1;
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
    drop(connection);
    linger(&mut io).await;
}

/// How long a connection the gateway ended is read from before it closes.
const LINGER: Duration = Duration::from_secs(1);

/// Shuts the connection down for writing and reads, and discards, what the
/// client still sends until it closes its side (for up to [`LINGER`]).
/// Closing a socket with bytes unread makes the kernel send a TCP reset,
/// which can destroy the GOAWAY (and with it the reason, and which calls
/// the client may safely retry) before the client reads it.
pub(crate) async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO) {
    let drained = async {
        let _ = io.shutdown().await;
        let mut sink = [0u8; 4096];
        while let Ok(1..) = io.read(&mut sink).await {}
    };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

/// What a connection's stream tasks share.
struct Connection {
    info: Arc<ConnInfo>,
    early_resets: EarlyResets,
}

async fn serve_stream(
    gateway: Gateway,
    connection: Arc<Connection>,
    request: Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let opened = Instant::now();
    // Read only if the client resets the stream (a shared-buffer clone).
    let declared_timeout = request.headers().get(crate::grpc_timeout::GRPC_TIMEOUT).cloned();
    let request = request.map(Body::h2);
    // In a block of its own, so the call's state and the writer's share
    // the task's memory instead of adding up.
    let response = {
        // Made in place (not moved into a pinned copy, which would hold a
        // second slot of the call's state in this task).
        let mut handled = std::pin::pin!(gateway.handle(request, &connection.info));
        tokio::select! {
            biased;
            response = &mut handled => response,
            // The client reset the stream before the answer: drop the call, which
            // cancels it upstream.
            reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                if reset.is_ok() {
                    connection.early_resets.client_reset(opened, declared_timeout.as_ref());
                }
                return;
            }
        }
    };
    if write_response(response, respond).await == Written::ResetByClient {
        connection.early_resets.client_reset(opened, declared_timeout.as_ref());
    }
}

/// How writing a response ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// All of it was handed to the connection (or the connection failed).
    Done,
    /// The client reset the stream first.
    ResetByClient,
}

impl Written {
    /// After a write failed: the failure says only that the stream is
    /// closed (a user error), so ask the stream whether the client reset it.
    fn after_failed_write(poll_reset: impl FnOnce(&mut Context<'_>) -> Poll<Result<h2::Reason, h2::Error>>) -> Self {
        match poll_reset(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(reset) => Self::after_reset(reset),
            Poll::Pending => Self::Done,
        }
    }

    fn after_reset(reset: Result<h2::Reason, h2::Error>) -> Self {
        match reset {
            Ok(_) => Self::ResetByClient,
            Err(_) => Self::Done,
        }
    }
}

/// Writes a response on an HTTP/2 stream, honouring flow control, and stops
/// (dropping the body, which cancels an upstream call) if the client resets,
/// or resets the stream itself once the client has kept it waiting for
/// window past the call's limit (see [`super::stall`]).
pub(crate) async fn write_response(response: Response<Body>, mut respond: h2::server::SendResponse<Bytes>) -> Written {
    let (mut parts, mut body) = response.into_parts();
    // An upstream body knows its limit; front ends that wrap one carry it
    // as an extension (looked up only then: native answers skip the map).
    let mut stall = StallTimer::new(body.stall_limit().or_else(|| parts.extensions.remove::<StallLimit>()));
    let end_of_stream = body.is_end_stream();
    let mut send = match respond.send_response(Response::from_parts(parts, ()), end_of_stream) {
        Ok(send) => send,
        Err(e) => {
            tracing::debug!(error = %e, "could not send response headers");
            return Written::after_failed_write(|cx| respond.poll_reset(cx));
        }
    };
    if end_of_stream {
        return Written::Done;
    }
    let mut pending: Option<Bytes> = None;
    poll_fn(|cx| poll_write_body(&mut body, &mut send, &mut pending, &mut stall, cx)).await
}

fn poll_write_body(
    body: &mut Body,
    send: &mut h2::SendStream<Bytes>,
    pending: &mut Option<Bytes>,
    stall: &mut StallTimer,
    cx: &mut Context<'_>,
) -> Poll<Written> {
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
                                return Poll::Ready(Written::Done);
                            }
                            return send.poll_reset(cx).map(Written::after_reset);
                        }
                        Poll::Ready(Some(Ok(0))) => continue,
                        Poll::Ready(Some(Ok(_))) => break,
                        Poll::Ready(Some(Err(_))) => {
                            return Poll::Ready(Written::after_failed_write(|cx| send.poll_reset(cx)));
                        }
                        Poll::Ready(None) => return Poll::Ready(Written::Done),
                    }
                }
            }
            let end = body.is_end_stream();
            match send.send_data(data, end) {
                Err(_) => return Poll::Ready(Written::after_failed_write(|cx| send.poll_reset(cx))),
                Ok(()) if end => return Poll::Ready(Written::Done),
                Ok(()) => {}
            }
            continue;
        }
        match std::pin::Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return send.poll_reset(cx).map(Written::after_reset),
            Poll::Ready(None) => {
                let _ = send.send_data(Bytes::new(), true);
                return Poll::Ready(Written::Done);
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
                        return Poll::Ready(Written::Done);
                    }
                }
            },
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; resetting the stream");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return Poll::Ready(Written::Done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lingering_reads_what_the_client_still_sends_and_ends_when_it_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            // More than the socket buffers hold: this completes only if
            // the server reads it.
            tcp.write_all(&vec![7u8; 4 << 20]).await.unwrap();
            let mut farewell = Vec::new();
            tcp.read_to_end(&mut farewell).await.unwrap();
            farewell
        });
        let (mut server, _) = listener.accept().await.unwrap();
        server.write_all(b"GOAWAY").await.unwrap();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), linger(&mut server))
            .await
            .expect("linger did not end when the client closed");
        assert!(started.elapsed() < LINGER);
        let farewell = tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("the client's writes were never read");
        assert_eq!(farewell.unwrap(), b"GOAWAY");
    }

    #[tokio::test]
    async fn lingering_gives_up_on_a_client_that_never_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let started = Instant::now();
        linger(&mut server).await;
        assert!(started.elapsed() >= LINGER && started.elapsed() < LINGER * 3);
    }
}
