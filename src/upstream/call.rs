//! One call on an upstream HTTP/2 stream: reading a one-message request ahead
//! so it can be resent, the request pump (client → backend, with
//! back-pressure and a bounded replay copy for transparent retries) and
//! the response body (backend → client) that enforces the deadline and the
//! stream idle timeout, turns stream failures into gRPC status trailers, and
//! reports the call's outcome when it ends.
//!
//! Frames are handed on as `Bytes` exactly as they arrived; messages are never
//! decoded here.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame};
use tokio::time::{Instant, Sleep};

use super::clock::Clock;
use super::endpoint::Endpoint;
use super::limits::Admitted;
use super::pool::{ConnectionEnd, Slot};
use crate::body::{Body, BoxError};
use crate::status::{Code, Status};

/// Whether a finished call speaks against the endpoint that served it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The backend answered (an application error such as NOT_FOUND is an answer).
    Success,
    /// UNAVAILABLE, INTERNAL, UNKNOWN, DATA_LOSS, or a transport failure.
    Failure,
    /// Says nothing about the backend: the client cancelled, or its own deadline ran out.
    Neutral,
}

impl Outcome {
    /// What a status from the backend says about it. DEADLINE_EXCEEDED is the
    /// backend's fault only when the client set no deadline of its own.
    pub(crate) fn of_code(code: Code, client_deadline: bool) -> Self {
        match code {
            Code::Unavailable | Code::Internal | Code::Unknown | Code::DataLoss => Self::Failure,
            Code::DeadlineExceeded if !client_deadline => Self::Failure,
            Code::Cancelled | Code::DeadlineExceeded => Self::Neutral,
            _ => Self::Success,
        }
    }
}

/// Holds an endpoint's in-flight count and a stream slot for the life of a
/// call, and reports the outcome to the endpoint when dropped.
pub(crate) struct CallGuard {
    endpoint: Arc<Endpoint>,
    slot: Slot,
    outcome: Outcome,
    /// This call is the single probe of an endpoint whose ejection ran out.
    probe: bool,
    client_deadline: bool,
    /// The call's place under the cluster's limits, held until it ends.
    admitted: Option<Admitted>,
    /// The gRPC code the call ended with, once known.
    code: Option<Code>,
    /// The call failed because its connection was lost.
    connection_lost: bool,
}

impl CallGuard {
    pub(crate) fn new(endpoint: Arc<Endpoint>, slot: Slot, probe: bool, client_deadline: bool) -> Self {
        Self {
            endpoint,
            slot,
            // A call dropped before it finished was cancelled by the client.
            outcome: Outcome::Neutral,
            probe,
            client_deadline,
            admitted: None,
            code: None,
            connection_lost: false,
        }
    }

    pub(crate) fn finish(&mut self, outcome: Outcome) {
        self.outcome = outcome;
    }

    /// Finishes with the status the backend sent.
    pub(crate) fn finish_with(&mut self, code: Code) {
        self.outcome = Outcome::of_code(code, self.client_deadline);
        self.code = Some(code);
    }

    /// Notes that the call failed because its connection was lost: if the
    /// backend closed it for our traffic's sake, that is not held against it.
    pub(crate) fn mark_connection_lost(&mut self) {
        self.connection_lost = true;
    }

    /// Records the code of a status the gateway made for this call.
    pub(crate) fn set_code(&mut self, code: Code) {
        self.code = Some(code);
    }

    /// Keeps the call counted under the cluster's limits for as long as it lives.
    pub(crate) fn hold(&mut self, admitted: Option<Admitted>) {
        self.admitted = admitted;
    }

    pub(crate) fn slot(&self) -> &Slot {
        &self.slot
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.outcome == Outcome::Failure
            && self.connection_lost
            && self.slot.connection_end() == Some(ConnectionEnd::RefusedOurTraffic)
        {
            self.outcome = Outcome::Neutral;
        }
        self.endpoint.count_code(self.code.unwrap_or(Code::Cancelled));
        self.endpoint.end_call(self.outcome, self.probe);
    }
}

/// The data of a request kept for a retry, while it stays under the limit.
/// Most requests are one chunk, kept without allocating.
pub(crate) struct Replay {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    size: usize,
    limit: usize,
    complete: bool,
    overflowed: bool,
}

impl Replay {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            first: None,
            rest: Vec::new(),
            trailers: None,
            size: 0,
            limit,
            complete: false,
            overflowed: false,
        }
    }

    fn record(&mut self, chunk: &Bytes) {
        if self.overflowed {
            return;
        }
        self.size += chunk.len();
        if self.size > self.limit {
            self.overflowed = true;
            self.first = None;
            self.rest = Vec::new();
        } else if self.first.is_none() {
            self.first = Some(chunk.clone());
        } else {
            self.rest.push(chunk.clone());
        }
    }

    /// A fresh body with the same data, if the whole request was recorded.
    pub(crate) fn body(&self) -> Option<Body> {
        if !self.complete || self.overflowed {
            return None;
        }
        let chunks = self.first.iter().chain(&self.rest).cloned().collect();
        Some(Body::from_chunks(chunks, self.trailers.clone()))
    }

    /// Whether a fresh body could be made (without making it).
    pub(crate) fn is_available(&self) -> bool {
        self.complete && !self.overflowed
    }
}

/// A request body read ahead of the call.
pub(crate) enum ReadAhead {
    /// All of it, kept for as many attempts as the call makes.
    Whole(Replay),
    /// More than the replay limit: what was read, then the rest still arriving.
    TooLarge(Body),
}

/// Reads a one-message request (unary or server-streaming) to its end before
/// the first attempt, so a retry can resend it and a stream refused by a
/// GOAWAY can go to another endpoint. The client sends such a request at
/// once, so this waits no longer than the first attempt would have.
///
/// Past `limit` bytes it stops and hands back a body that replays what was
/// read followed by the rest: that call is sent once, without retries.
/// Fails when a timer expires first (the client never finished its request)
/// or the client's body fails.
pub(crate) async fn read_ahead(mut body: Body, limit: usize, timers: &mut Timers) -> Result<ReadAhead, Status> {
    use http_body_util::BodyExt as _;
    let mut replay = Replay::new(limit);
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            (status, _) = std::future::poll_fn(|cx| timers.poll_expired(cx)) => return Err(status),
        };
        match frame {
            None => break,
            Some(Err(error)) => {
                return Err(Status::new(
                    Code::Cancelled,
                    format!("the client's request failed before it was sent: {error}"),
                ));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if replay.size + data.len() > limit => {
                    let mut read: std::collections::VecDeque<Bytes> =
                        replay.first.take().into_iter().chain(replay.rest).collect();
                    read.push_back(data);
                    return Ok(ReadAhead::TooLarge(Body::new(Prefixed { read, rest: body })));
                }
                Ok(data) => replay.record(&data),
                Err(frame) => {
                    replay.trailers = frame.into_trailers().ok();
                    break;
                }
            },
        }
    }
    replay.complete = true;
    Ok(ReadAhead::Whole(replay))
}

/// Data already read from a body, then the rest of that body.
struct Prefixed {
    read: std::collections::VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.read.pop_front() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Pin::new(&mut self.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.is_empty() && self.rest.is_end_stream()
    }
}

/// Copies the client's request body onto the upstream stream.
pub(crate) struct RequestPump {
    body: Body,
    send: h2::SendStream<Bytes>,
    pending: Option<Bytes>,
    pub(crate) replay: Option<Replay>,
    activity: Option<Arc<Activity>>,
}

/// Why the request pump stopped early.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// The client's body failed (it reset the stream or the connection broke).
    Downstream(BoxError),
    /// The upstream stream closed or was reset; the response side reports why.
    Upstream,
}

impl RequestPump {
    pub(crate) fn new(
        body: Body,
        send: h2::SendStream<Bytes>,
        replay: Option<Replay>,
        activity: Option<Arc<Activity>>,
    ) -> Self {
        Self {
            body,
            send,
            pending: None,
            replay,
            activity,
        }
    }

    /// Moves as much of the body as flow control allows; `Ready` when done.
    pub(crate) fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PumpError>> {
        loop {
            if let Some(data) = self.pending.take() {
                // Wait for window before handing h2 more, so a slow backend
                // slows the client down instead of filling our memory.
                self.send.reserve_capacity(data.len());
                if self.send.capacity() == 0 {
                    loop {
                        match self.send.poll_capacity(cx) {
                            Poll::Pending => {
                                self.pending = Some(data);
                                return Poll::Pending;
                            }
                            Poll::Ready(Some(Ok(0))) => continue,
                            Poll::Ready(Some(Ok(_))) => break,
                            Poll::Ready(Some(Err(_)) | None) => {
                                return Poll::Ready(Err(PumpError::Upstream));
                            }
                        }
                    }
                }
                let end = self.body.is_end_stream();
                if self.send.send_data(data, end).is_err() {
                    return Poll::Ready(Err(PumpError::Upstream));
                }
                if end {
                    self.mark_complete();
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        if let Some(replay) = &mut self.replay {
                            replay.record(&data);
                        }
                        if let Some(activity) = &self.activity {
                            activity.touch();
                        }
                        self.pending = Some(data);
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            if self.send.send_trailers(trailers).is_err() {
                                return Poll::Ready(Err(PumpError::Upstream));
                            }
                            self.mark_complete();
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.send.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err(PumpError::Downstream(e)));
                }
                None => {
                    if self.send.send_data(Bytes::new(), true).is_err() {
                        return Poll::Ready(Err(PumpError::Upstream));
                    }
                    self.mark_complete();
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn mark_complete(&mut self) {
        if let Some(replay) = &mut self.replay {
            replay.complete = true;
        }
    }

    /// Runs the pump to the end (in its own task, for streaming requests).
    pub(crate) async fn run(mut self) {
        if let Err(PumpError::Downstream(e)) = std::future::poll_fn(|cx| self.poll_pump(cx)).await {
            tracing::debug!(error = %e, "client request stream ended with an error; upstream stream reset");
        }
    }
}

/// The time of the last message in either direction of a stream, for the idle timeout.
pub(crate) struct Activity {
    clock: Clock,
    last_nanos: AtomicU64,
}

impl Activity {
    pub(crate) fn new(clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            last_nanos: AtomicU64::new(clock.now_nanos()),
            clock,
        })
    }

    fn touch(&self) {
        self.last_nanos.store(self.clock.now_nanos(), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.clock.instant_at(self.last_nanos.load(Ordering::Relaxed))
    }
}

/// How long a response may wait for its client to read it: until the
/// call's deadline, and for streams until `stream_idle_timeout` has passed
/// with no message in either direction.
///
/// The call's own timers live in its body, which nobody polls while the
/// client reads nothing (its flow-control window stays shut), so the
/// server that writes the response asks the body for this copy (front ends
/// that wrap the body pass it on as a response extension) and ends the
/// stream itself when the wait outlasts it.
#[derive(Clone)]
pub(crate) struct StallLimit {
    deadline: Option<Instant>,
    idle: Option<(Duration, Arc<Activity>)>,
}

impl StallLimit {
    /// When a response still waiting for its client must be given up.
    pub(crate) fn expires_at(&self) -> Option<Instant> {
        earliest_expiry(self.deadline, self.idle.as_ref())
    }

    /// Whether this is a stream's limit (it has an idle timeout).
    pub(crate) fn is_stream(&self) -> bool {
        self.idle.is_some()
    }
}

/// The sooner of a deadline and an idle timeout (counted from the last
/// activity), if there is either.
fn earliest_expiry(deadline: Option<Instant>, idle: Option<&(Duration, Arc<Activity>)>) -> Option<Instant> {
    let idle = idle.map(|(limit, activity)| activity.last() + *limit);
    match (deadline, idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The timers of a call: an overall deadline (unary calls, or the client's
/// `grpc-timeout`), and for streams an idle timeout.
pub(crate) struct Timers {
    pub(crate) sleep: Pin<Box<Sleep>>,
    pub(crate) deadline: Option<Deadline>,
    pub(crate) idle: Option<(Duration, Arc<Activity>)>,
}

/// Where a deadline came from decides what its expiry means for the endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    /// The client's own `grpc-timeout` set it (its expiry is not the backend's fault).
    pub(crate) from_client: bool,
}

/// A time no call reaches (the sleep of a call with no timer left waits
/// for it), read once per process rather than once per call.
pub(crate) static FAR_FUTURE: std::sync::LazyLock<Instant> =
    std::sync::LazyLock::new(|| Instant::now() + Duration::from_secs(86_400 * 365 * 30));

impl Timers {
    pub(crate) fn new(deadline: Option<Deadline>, idle: Option<(Duration, Arc<Activity>)>) -> Self {
        let far = *FAR_FUTURE;
        let mut timers = Self {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            deadline,
            idle,
        };
        let next = timers.next_expiry(far);
        timers.sleep.as_mut().reset(next);
        timers
    }

    /// The limit on waiting for the client, for the response's writer.
    pub(crate) fn stall_limit(&self) -> StallLimit {
        StallLimit {
            deadline: self.deadline.map(|d| d.at),
            idle: self.idle.clone(),
        }
    }

    fn next_expiry(&self, far: Instant) -> Instant {
        earliest_expiry(self.deadline.map(|d| d.at), self.idle.as_ref()).unwrap_or(far)
    }

    /// `Ready` when a timer truly expired, with the status for the client and
    /// what the expiry says about the endpoint; re-arms itself after activity.
    ///
    /// Only the route's own deadline counts against the endpoint: the client
    /// chose its `grpc-timeout`, and a stream that stays quiet past the idle
    /// timeout is usually an idle client or subscription, not a slow backend.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<(Status, Outcome)> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = Instant::now();
            if let Some(deadline) = self.deadline
                && now >= deadline.at
            {
                let (why, outcome) = if deadline.from_client {
                    ("deadline exceeded (the client's grpc-timeout)", Outcome::Neutral)
                } else {
                    ("deadline exceeded (the route's timeout)", Outcome::Failure)
                };
                return Poll::Ready((Status::new(Code::DeadlineExceeded, why), outcome));
            }
            if let Some((limit, activity)) = &self.idle
                && now >= activity.last() + *limit
            {
                let status = Status::new(
                    Code::DeadlineExceeded,
                    format!("stream idle for {limit:?} (the route's stream_idle_timeout)"),
                );
                return Poll::Ready((status, Outcome::Neutral));
            }
            let next = self.next_expiry(*FAR_FUTURE);
            self.sleep.as_mut().reset(next);
        }
    }
}

use std::future::Future as _;

enum State {
    Data,
    Trailers,
    Done,
}

/// The response body of an upstream call.
pub(crate) struct UpstreamBody {
    recv: h2::RecvStream,
    state: State,
    timers: Timers,
    /// The response headers carried `grpc-status` (trailers-only): no trailers follow.
    status_in_headers: bool,
    guard: CallGuard,
}

impl UpstreamBody {
    pub(crate) fn new(recv: h2::RecvStream, timers: Timers, headers: &HeaderMap, mut guard: CallGuard) -> Self {
        let status_in_headers = match Code::in_headers(headers) {
            Some(code) => {
                guard.finish_with(code);
                true
            }
            None => false,
        };
        let state = if recv.is_end_stream() && status_in_headers {
            State::Done
        } else {
            State::Data
        };
        Self {
            recv,
            state,
            timers,
            status_in_headers,
            guard,
        }
    }

    /// The body is waiting for the backend: the timers must wake it.
    fn wait_for_timers(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        match self.timers.poll_expired(cx) {
            Poll::Ready((status, outcome)) => self.fail(status, outcome),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Ends the body with a status the gateway made (deadline, lost stream).
    fn fail(&mut self, status: Status, outcome: Outcome) -> Poll<Option<Frame<Bytes>>> {
        self.state = State::Done;
        self.guard.finish(outcome);
        self.guard.set_code(status.code);
        tracing::debug!(endpoint = %self.guard.endpoint().target, %status, "upstream call ended by the gateway");
        Poll::Ready(Some(Frame::trailers(status.to_trailers())))
    }

    fn stream_error(&mut self, error: &h2::Error) -> Poll<Option<Frame<Bytes>>> {
        let target = self.guard.endpoint().target.clone();
        let (mut status, outcome) = status_for_stream_error(error, &target);
        if error.is_go_away() || error.is_io() {
            self.guard.slot().retire_connection();
            self.guard.mark_connection_lost();
            if let Some(said) = self
                .guard
                .slot()
                .connection_end()
                .and_then(|end| end.lost_call_status(&target))
            {
                status = said;
            }
        }
        self.fail(status, outcome)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// How long the response may wait for its client (see [`StallLimit`]).
    pub(crate) fn stall_limit(&self) -> StallLimit {
        self.timers.stall_limit()
    }

    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        if matches!(self.state, State::Done) {
            return Poll::Ready(None);
        }
        // The timer is polled (its waker registered) only when the body has
        // to wait; a frame already here is checked against a timer that
        // fired with one atomic load.
        if self.timers.sleep.is_elapsed()
            && let Poll::Ready((status, outcome)) = self.timers.poll_expired(cx)
        {
            return self.fail(status, outcome);
        }
        if matches!(self.state, State::Data) {
            match self.recv.poll_data(cx) {
                Poll::Pending => return self.wait_for_timers(cx),
                Poll::Ready(Some(Ok(data))) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some((_, activity)) = &self.timers.idle {
                        activity.touch();
                    }
                    return Poll::Ready(Some(Frame::data(data)));
                }
                Poll::Ready(Some(Err(e))) => return self.stream_error(&e),
                Poll::Ready(None) => self.state = State::Trailers,
            }
        }
        let trailers = match self.recv.poll_trailers(cx) {
            Poll::Ready(trailers) => trailers,
            Poll::Pending => return self.wait_for_timers(cx),
        };
        match trailers {
            Ok(Some(trailers)) => {
                self.state = State::Done;
                match Code::in_headers(&trailers) {
                    Some(code) => self.guard.finish_with(code),
                    None => self.guard.finish(Outcome::Failure),
                }
                Poll::Ready(Some(Frame::trailers(trailers)))
            }
            Ok(None) if self.status_in_headers => {
                self.state = State::Done;
                Poll::Ready(None)
            }
            Ok(None) => self.fail(
                Status::new(Code::Internal, "upstream ended the stream without a grpc-status"),
                Outcome::Failure,
            ),
            Err(e) => self.stream_error(&e),
        }
    }
}

/// The status a client sees when an upstream stream fails, and whether it
/// counts against the endpoint.
pub(crate) fn status_for_stream_error(error: &h2::Error, target: &str) -> (Status, Outcome) {
    if let Some(reason) = error.reason()
        && (error.is_reset() || error.is_go_away())
    {
        let code = match reason {
            // A backend's GOAWAY reaches a stream as an error only when the
            // stream is above its last stream id: never processed, so the
            // client may safely try again, whatever the GOAWAY's reason.
            _ if error.is_go_away() && error.is_remote() => Code::Unavailable,
            // Our own GOAWAY that cut this stream.
            h2::Reason::NO_ERROR if error.is_go_away() => Code::Unavailable,
            reason => Code::from_h2_reason(reason),
        };
        let outcome = if code == Code::Cancelled {
            Outcome::Neutral
        } else {
            Outcome::Failure
        };
        let message = if error.is_remote() {
            format!("upstream {target} reset the stream: {reason}")
        } else {
            format!("stream to {target} failed: {reason}")
        };
        return (Status::new(code, message), outcome);
    }
    (
        Status::new(Code::Unavailable, format!("upstream {target} connection lost: {error}")),
        Outcome::Failure,
    )
}
