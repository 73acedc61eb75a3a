//! One HTTP/2 connection's send side, shared between the task that owns the
//! connection and the tasks of the connections its calls are relayed to.
//!
//! A relayed call is a stream on two connections (client and upstream).
//! Whatever one leg receives is written into the other leg's [`Side`]:
//! frames are appended to its output buffer, which its own task writes out.
//! The side keeps what HTTP/2 requires of a sender: the peer's flow-control
//! windows (data beyond them waits in the stream's queue, and header blocks
//! wait behind it so nothing overtakes), the HPACK encoder (blocks are
//! encoded in the order they are written, since the peer's table follows
//! that order), and the peer's frame-size limit.
//!
//! It also keeps the receive-side bookkeeping for the leg's peer: bytes the
//! peer sent that have been forwarded are owed back as WINDOW_UPDATE. Data
//! is credited only once it has left this relay's queues, so a stream never
//! holds more than the window its sender was given: back-pressure crosses
//! the relay from the slow reader to the fast writer.
//!
//! No function here takes a second side's lock. Work that the other leg
//! must see (credits for forwarded data) is returned as [`Credit`]s for the
//! caller to apply after releasing this lock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use h2::Reason;
use tokio::time::Instant;

use super::frame::{self, DEFAULT_MAX_FRAME_SIZE, DEFAULT_WINDOW, MAX_WINDOW, Settings, flag, kind};
use super::hpack;
use crate::status::{Code, Status};
use crate::telemetry::{CallRecord, Observer};
use crate::upstream::{Admitted, Endpoint, Outcome, Slot};

/// Which end of the relay a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// A client's connection: we are its server. A failed call ends here
    /// with gRPC status trailers.
    Client,
    /// A connection to a backend: we are its client. A failed call ends
    /// here with RST_STREAM(CANCEL).
    Upstream,
}

/// How old a request must be before its cancel goes out (see
/// [`SideState::fail`]).
pub(crate) const HOLD_YOUNG_RESETS: std::time::Duration = std::time::Duration::from_millis(50);

/// Most bytes of frames a connection holds for its socket (`out` plus what
/// its task took but has not written): data beyond it waits in its
/// stream's queue, uncredited, so a peer that stops reading stops its
/// senders.
const MAX_BUFFER: usize = 256 << 10;

/// A connection's shared send side.
pub(crate) struct Side {
    state: Mutex<SideState>,
    /// The connection's task, woken when there is output to write.
    waker: AtomicWaker,
}

/// Receive windows this end advertises, and so how often it credits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Windows {
    pub(crate) stream: u32,
    pub(crate) connection: u32,
}

impl Side {
    pub(crate) fn new(role: Role, receive: Windows, endpoint: Weak<Endpoint>) -> Arc<Side> {
        Arc::new(Side {
            state: Mutex::new(SideState {
                role,
                endpoint,
                next_stream: 1,
                draining: false,
                refused_our_traffic: false,
                // The connection's owner announces this window (a
                // WINDOW_UPDATE past the default) before anything else.
                recv_window: i64::from(receive.connection),
                deadlines: BTreeSet::new(),
                backlog: 0,
                out: Vec::with_capacity(16 << 10),
                encoder: hpack::Encoder::new(),
                window: i64::from(DEFAULT_WINDOW),
                initial_window: i64::from(DEFAULT_WINDOW),
                max_frame: DEFAULT_MAX_FRAME_SIZE as usize,
                streams: HashMap::default(),
                blocked: VecDeque::new(),
                closed: false,
                receive,
                owed: 0,
                refused: Vec::new(),
                refuse_with_reset: false,
                held_resets: VecDeque::new(),
                last_opened: 0,
            }),
            waker: AtomicWaker::new(),
        })
    }

    /// A side whose output starts with what a new connection sends first:
    /// for an upstream connection the client preface; then `settings`, and
    /// a WINDOW_UPDATE taking the connection window from the default to
    /// `receive.connection` (the receive windows it enforces).
    pub(crate) fn opening(role: Role, receive: Windows, endpoint: Weak<Endpoint>, settings: Settings) -> Arc<Side> {
        let side = Side::new(role, receive, endpoint);
        {
            let mut state = side.lock();
            if role == Role::Upstream {
                state.out.extend_from_slice(frame::PREFACE);
            }
            settings.write(&mut state.out);
            if let Some(more) = receive.connection.checked_sub(DEFAULT_WINDOW)
                && more > 0
            {
                frame::write_window_update(&mut state.out, 0, more);
            }
        }
        side
    }

    /// Locks the side. A panic elsewhere while it was held leaves frames
    /// that are still well-formed (each is written whole), so a poisoned
    /// lock is taken as it is.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SideState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the connection's task to write what was appended.
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Registers the connection's task (from its poll).
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

/// Bytes forwarded out of a leg's queue, owed back to the sender on the
/// other leg as WINDOW_UPDATE.
pub(crate) struct Credit {
    pub(crate) side: Arc<Side>,
    pub(crate) stream: u32,
    pub(crate) bytes: u32,
}

/// The send state of a connection.
pub(crate) struct SideState {
    role: Role,
    /// For an upstream connection: the endpoint its calls are counted on
    /// (weak: the endpoint's pool holds this side).
    endpoint: Weak<Endpoint>,
    /// For an upstream connection: the id of the next stream we open.
    next_stream: u32,
    /// No new streams: a GOAWAY was received or sent.
    pub(crate) draining: bool,
    /// The peer's GOAWAY said ENHANCE_YOUR_CALM: calls its closing cuts
    /// are not held against it (our traffic was the trouble).
    pub(crate) refused_our_traffic: bool,
    /// What the peer may still send on the connection before we credit it.
    recv_window: i64,
    /// Calls with a deadline, soonest first (client connections).
    deadlines: BTreeSet<(Instant, u32)>,
    /// Frames waiting for the connection's task to write them.
    pub(crate) out: Vec<u8>,
    encoder: hpack::Encoder,
    /// The peer's connection window for the data we send.
    window: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE.
    initial_window: i64,
    /// The peer's SETTINGS_MAX_FRAME_SIZE.
    max_frame: usize,
    streams: HashMap<u32, Half, foldhash::quality::RandomState>,
    /// Streams with data queued for lack of connection window, oldest first.
    blocked: VecDeque<u32>,
    /// The connection is gone: nothing more is written.
    closed: bool,
    receive: Windows,
    /// Connection-level bytes received and forwarded, not yet credited.
    owed: u32,
    /// What the task took from `out` and has not written yet.
    backlog: usize,
    /// Client legs whose backend refused the call unprocessed: the
    /// connection's task sends them elsewhere.
    refused: Vec<u32>,
    /// A call the peer's backend never processed is refused to the peer
    /// (RST_STREAM(REFUSED_STREAM)) rather than failed: the peer is the
    /// gateway's own h2 path, which sends it elsewhere.
    pub(crate) refuse_with_reset: bool,
    /// The highest stream id opened on this side (the peer's, for a client
    /// connection), for a GOAWAY.
    last_opened: u32,
    /// Resets of streams cancelled moments after they opened, and when
    /// each goes out (see [`SideState::fail`]).
    held_resets: VecDeque<(Instant, u32)>,
}

/// Links `stream` on `side` to a new stream on `peer` that carries the
/// request as it came (`fields` unchanged; no pool slot, no outlier probe):
/// the hand-over to the h2 path, and the bridge's streams onto a relay
/// connection. The peer's stream id, or `None` when it takes no new stream.
pub(crate) fn open_unchanged(
    side: &Arc<Side>,
    stream: u32,
    peer: &Arc<Side>,
    fields: &Fields,
    end_stream: bool,
) -> Option<u32> {
    side.lock().open(stream, peer.clone(), 0);
    peer.lock().open_next(
        side.clone(),
        stream,
        fields,
        end_stream,
        crate::turn::now(),
        false,
        None,
    )
}

/// Replay buffers kept for reuse, per thread rather than per connection: a
/// connection with a hundred calls in flight gets a hundred answers in one
/// read and then a hundred new calls, and a thread's spares serve all of
/// its connections (a few hundred bytes each, at most this many).
const MAX_SPARE_REPLAYS: usize = 256;

thread_local! {
    #[allow(clippy::vec_box, reason = "the boxes move into calls and back, never reallocated")]
    static SPARE_REPLAYS: std::cell::RefCell<Vec<Box<Replay>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A relayed request kept until its answer's headers arrive: a backend
/// that refuses a stream unprocessed (RST_STREAM(REFUSED_STREAM), or a
/// GOAWAY below it) leaves the call free to go to another endpoint, as
/// the h2 path resends it. A request larger than the replay limit is not
/// kept (the client then hears the refusal).
#[derive(Default)]
pub(crate) struct Replay {
    /// The request headers as the backend got them.
    pub(crate) fields: Fields,
    pub(crate) data: Vec<Bytes>,
    len: usize,
    limit: usize,
    /// Bytes of `data` already credited to the client when they were
    /// forwarded: sending them again must not credit them twice.
    pub(crate) credited: u32,
    /// Waiting to be sent elsewhere; `why` is what the client hears if no
    /// endpoint is left.
    pub(crate) refused: Option<Status>,
    /// The endpoints that refused it (as the balancer names them).
    pub(crate) tried: Vec<usize>,
}

/// One stream of a relayed call, on this connection.
pub(crate) struct Half {
    /// The call's other leg.
    pub(crate) peer: Arc<Side>,
    pub(crate) peer_stream: u32,
    /// The peer's window for data we send on this stream.
    window: i64,
    queue: VecDeque<Queued>,
    /// Whether a header block went out on this stream (for a client leg:
    /// the response headers, so an error now needs trailers, not a
    /// trailers-only response).
    pub(crate) headers_sent: bool,
    pub(crate) end_sent: bool,
    pub(crate) end_received: bool,
    /// Bytes received on this stream and forwarded, not yet credited.
    owed: u32,
    /// What the peer may still send on this stream before we credit it.
    recv_window: i64,
    /// For an upstream leg: what the call's end says about the endpoint,
    /// and the gRPC code it ended with (none: the client cancelled it).
    pub(crate) outcome: Outcome,
    pub(crate) code: Option<Code>,
    /// For a client leg: when the call must end, and whether the client
    /// asked for it (else the route's timeout did).
    deadline: Option<(Instant, bool)>,
    /// For a client leg of a stream: end it after this long with no data
    /// moving either way.
    idle: Option<std::time::Duration>,
    last_activity: Option<Instant>,
    /// The call's entry in the side's timer index.
    timer_at: Option<Instant>,
    /// For a client leg: when the call arrived, and the timeout the client
    /// declared, to judge its reset (the rapid-reset guard).
    pub(crate) opened: Option<(Instant, Option<std::time::Duration>)>,
    /// For a client leg: the call's metrics and access-log record.
    pub(crate) telemetry: Option<Box<CallTelemetry>>,
    /// For an upstream leg: when its request went out, until the answer's
    /// headers come back (the balancer learns the round trip).
    sent_at: Option<Instant>,
    /// For a client leg: the call's place under the cluster's limits.
    pub(crate) admitted: Option<Admitted>,
    /// For an upstream leg: the call probes an ejected endpoint.
    probe: bool,
    /// For a client leg: the request, until the answer's headers arrive.
    pub(crate) replay: Option<Box<Replay>>,
    /// For an upstream leg carrying a resent request: bytes it forwards
    /// that the client was credited for on an earlier attempt.
    pub(crate) credited_before: u32,
    /// For an upstream leg of a relayed call: its stream slot in the
    /// endpoint's pool (freed with the leg), and the call is counted on the
    /// endpoint here. The h2 path's calls through the bridge hold their
    /// slots and count themselves.
    slot: Option<Slot>,
}

/// A relayed call's measurement: bytes (and, for streams, messages) each
/// way, and its final status. A record dropped unfinished counts the call
/// as cancelled by the client.
pub(crate) struct CallTelemetry {
    record: CallRecord,
    inbound: Observer,
    outbound: Observer,
}

impl CallTelemetry {
    pub(crate) fn new(record: CallRecord) -> Box<Self> {
        Box::new(CallTelemetry {
            inbound: Observer::new(record.clone(), true),
            outbound: Observer::new(record.clone(), false),
            record,
        })
    }

    /// Names the endpoint that serves the call (after a resend).
    pub(crate) fn served_by(&self, endpoint: &Arc<str>) {
        self.record.set_served(Some(&crate::telemetry::Served {
            endpoint: endpoint.clone(),
            retries: 0,
        }));
    }

    /// Finishes with the status a closing header block carries.
    fn finish_with(&self, fields: &Fields) {
        match fields.get(b"grpc-status") {
            Some(b"0") => self.record.finish(&Status::new(Code::Ok, "")),
            Some(_) => {
                // Rare: decode the message and details as the h2 path does.
                let mut headers = http::HeaderMap::new();
                for (name, value) in fields.iter().filter(|(name, _)| name.starts_with(b"grpc-")) {
                    if let (Ok(name), Ok(value)) =
                        (http::HeaderName::from_bytes(name), http::HeaderValue::from_bytes(value))
                    {
                        headers.insert(name, value);
                    }
                }
                self.record.finish_if_status_in(&headers);
            }
            None => self
                .record
                .finish(&Status::new(Code::Unknown, "the response ended without a grpc-status")),
        }
    }
}

/// Why a call's timer ended it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Its deadline passed; `from_client` when the client's `grpc-timeout` set it.
    Deadline { from_client: bool },
    /// No data moved for this long.
    Idle(std::time::Duration),
}

enum Queued {
    Data(Bytes),
    /// END_STREAM with no more data.
    End,
    Headers(Fields, bool),
}

/// A decoded header block kept whole: names and values in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    bytes: Vec<u8>,
    spans: Vec<(u32, u32, u32)>,
}

impl Clone for Fields {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            spans: self.spans.clone(),
        }
    }

    /// Into the buffers `self` has (a derived `clone_from` would allocate
    /// new ones): a kept request's headers are copied once per call.
    fn clone_from(&mut self, source: &Self) {
        self.bytes.clone_from(&source.bytes);
        self.spans.clone_from(&source.spans);
    }
}

impl Fields {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    pub(crate) fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len() as u32;
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.spans.push((start, name.len() as u32, value.len() as u32));
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&(start, name, value)| {
            let name_end = (start + name) as usize;
            (
                &self.bytes[start as usize..name_end],
                &self.bytes[name_end..name_end + value as usize],
            )
        })
    }

    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// A stream error the peer caused by a WINDOW_UPDATE or SETTINGS.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FlowError {
    pub(crate) stream: Option<u32>,
    pub(crate) reason: Reason,
    pub(crate) what: &'static str,
}

impl SideState {
    /// Whether the connection is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Marks the connection gone and drops every stream; returns them so
    /// their other legs can be told.
    pub(crate) fn close(&mut self) -> Vec<(u32, Half)> {
        self.closed = true;
        self.blocked.clear();
        // The connection's end cancels them all.
        self.held_resets.clear();
        let halves: Vec<(u32, Half)> = self.streams.drain().collect();
        if let Some(endpoint) = self.endpoint.upgrade() {
            for (_, half) in halves.iter().filter(|(_, half)| half.slot.is_some()) {
                // Calls cut by the connection's end were lost, not cancelled.
                endpoint.count_code(half.code.unwrap_or(Code::Unavailable));
                let outcome = match self.refused_our_traffic {
                    true => Outcome::Neutral,
                    false => half.outcome,
                };
                endpoint.end_call(outcome, half.probe);
            }
        }
        halves
    }

    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE: what it lets each stream
    /// send it before it reads.
    pub(crate) fn peer_stream_window(&self) -> u32 {
        u32::try_from(self.initial_window).unwrap_or(DEFAULT_WINDOW)
    }

    pub(crate) fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The highest stream id opened on this side.
    pub(crate) fn last_opened(&self) -> u32 {
        self.last_opened
    }

    /// Opens this leg of a call.
    pub(crate) fn open(&mut self, stream: u32, peer: Arc<Side>, peer_stream: u32) {
        self.last_opened = self.last_opened.max(stream);
        self.streams.insert(
            stream,
            Half {
                peer,
                peer_stream,
                window: self.initial_window,
                queue: VecDeque::new(),
                headers_sent: false,
                end_sent: false,
                end_received: false,
                owed: 0,
                recv_window: i64::from(self.receive.stream),
                // Until the backend's trailers say otherwise, a call that
                // ends counts against it.
                outcome: Outcome::Failure,
                code: None,
                deadline: None,
                idle: None,
                last_activity: None,
                timer_at: None,
                opened: None,
                telemetry: None,
                sent_at: None,
                admitted: None,
                probe: false,
                replay: None,
                credited_before: 0,
                slot: None,
            },
        );
    }

    /// Opens the upstream leg of a call with the next stream id, sending
    /// its request headers now, under this lock, so ids and HPACK state go
    /// out in order. `None` when the connection takes no more streams.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call per relayed stream, each argument its own"
    )]
    pub(crate) fn open_next(
        &mut self,
        peer: Arc<Side>,
        peer_stream: u32,
        fields: &Fields,
        end: bool,
        now: Instant,
        probe: bool,
        slot: Option<Slot>,
    ) -> Option<u32> {
        if self.closed || self.draining || self.next_stream > MAX_WINDOW {
            return None;
        }
        let stream = self.next_stream;
        self.next_stream += 2;
        let counted = slot.is_some();
        if counted && let Some(endpoint) = self.endpoint.upgrade() {
            endpoint.begin_call();
        }
        self.open(stream, peer, peer_stream);
        if let Some(half) = self.streams.get_mut(&stream) {
            half.sent_at = counted.then_some(now);
            half.probe = probe;
            half.slot = slot;
        }
        self.send_headers(stream, fields, end);
        Some(stream)
    }

    /// Takes the peer's DATA on `stream` against the windows we gave it;
    /// returns the call's other leg, if the stream is open here.
    ///
    /// Padding is credited back at once; `end` notes the peer's END_STREAM.
    /// Data for a stream no longer open is dropped and its window given back.
    pub(crate) fn received_data(
        &mut self,
        stream: u32,
        flow_len: u32,
        data: &Bytes,
        end: bool,
    ) -> Result<Option<(Arc<Side>, u32)>, FlowError> {
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(FlowError {
                stream: None,
                reason: Reason::FLOW_CONTROL_ERROR,
                what: "DATA beyond the connection window",
            });
        }
        let Some(half) = self.streams.get_mut(&stream) else {
            self.grant(stream, flow_len);
            return Ok(None);
        };
        half.recv_window -= i64::from(flow_len);
        if half.recv_window < 0 {
            return Err(FlowError {
                stream: Some(stream),
                reason: Reason::FLOW_CONTROL_ERROR,
                what: "DATA beyond the stream window",
            });
        }
        if half.end_received {
            return Err(FlowError {
                stream: Some(stream),
                reason: Reason::STREAM_CLOSED,
                what: "DATA after END_STREAM",
            });
        }
        Self::touch(half);
        if let Some(telemetry) = &mut half.telemetry {
            telemetry.inbound.data(data);
        }
        let mut waiting = false;
        if let Some(replay) = &mut half.replay {
            waiting = replay.refused.is_some();
            // While the call waits to be resent there is nowhere to forward
            // to: its data is kept (bounded by the window it was given).
            if waiting || replay.len + data.len() <= replay.limit {
                replay.len += data.len();
                replay.data.push(data.clone());
            } else if let Some(replay) = half.replay.take() {
                Self::recycle(replay);
            }
        }
        let Some(half) = self.streams.get_mut(&stream) else {
            return Ok(None);
        };
        let link = (half.peer.clone(), half.peer_stream);
        let padding = flow_len - data.len() as u32;
        if padding > 0 {
            self.grant(stream, padding);
        }
        if end {
            self.received_end(stream);
        }
        Ok((!waiting).then_some(link))
    }

    /// Keeps the request of the call on client leg `stream` (its headers
    /// as sent to `endpoint`), up to `limit` bytes of data.
    pub(crate) fn keep_replay(&mut self, stream: u32, fields: &Fields, endpoint: usize, limit: usize) {
        let mut replay = SPARE_REPLAYS.with_borrow_mut(Vec::pop).unwrap_or_default();
        replay.fields.clone_from(fields);
        replay.limit = limit;
        replay.tried.push(endpoint);
        if let Some(half) = self.streams.get_mut(&stream) {
            half.replay = Some(replay);
        }
    }

    /// Keeps a replay buffer, cleared, for another call on this thread.
    fn recycle(mut replay: Box<Replay>) {
        SPARE_REPLAYS.with_borrow_mut(|spare| {
            if spare.len() < MAX_SPARE_REPLAYS {
                replay.fields.clear();
                replay.data.clear();
                replay.tried.clear();
                replay.len = 0;
                replay.credited = 0;
                replay.refused = None;
                spare.push(replay);
            }
        });
    }

    /// The backend refused the call on client leg `stream` without
    /// processing it. With its request kept, the call waits here to be sent
    /// elsewhere (`true`); otherwise the caller fails it.
    pub(crate) fn refuse(&mut self, stream: u32, why: &Status) -> bool {
        let Some(replay) = self.streams.get_mut(&stream).and_then(|h| h.replay.as_mut()) else {
            return false;
        };
        if replay.refused.is_none() {
            replay.refused = Some(why.clone());
            self.refused.push(stream);
        }
        true
    }

    /// Fails the call on `stream`, which its backend never processed,
    /// unless it can be sent elsewhere (see [`SideState::refuse`]).
    pub(crate) fn fail_unprocessed(&mut self, stream: u32, status: &Status) {
        if self.refuse_with_reset {
            self.reset(stream, Reason::REFUSED_STREAM);
        } else if !self.refuse(stream, status) {
            self.fail(stream, status);
        }
    }

    /// Writes the held resets that are due by `now`; returns when the next
    /// one is.
    pub(crate) fn release_held_resets(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&(due, stream)) = self.held_resets.front() {
            if due > now {
                return Some(due);
            }
            self.held_resets.pop_front();
            if !self.closed {
                frame::write_rst_stream(&mut self.out, stream, Reason::CANCEL);
            }
        }
        None
    }

    /// When the next held reset is due.
    pub(crate) fn next_held_reset(&self) -> Option<Instant> {
        self.held_resets.front().map(|(due, _)| *due)
    }

    /// The calls waiting to be sent elsewhere.
    pub(crate) fn take_refused(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.refused)
    }

    /// The call's deadline, if it has one.
    pub(crate) fn deadline(&self, stream: u32) -> Option<Instant> {
        self.streams.get(&stream)?.deadline.map(|(at, _)| at)
    }

    /// Ends `stream` because the call's other leg failed with `status`: a
    /// client hears the status in trailers (or a trailers-only response), a
    /// backend gets RST_STREAM(CANCEL). Data still queued is dropped.
    pub(crate) fn fail(&mut self, stream: u32, status: &Status) -> Option<Half> {
        if self.role == Role::Upstream {
            // The client's side ended the call: not the backend's doing.
            let half = self.streams.get_mut(&stream)?;
            half.outcome = Outcome::Neutral;
            // A call cancelled moments after its request went out (and not
            // answered yet): its reset waits until the request is
            // `HOLD_YOUNG_RESETS` old, so that a backend reads it after it
            // took the stream. A burst of such resets (a client resetting
            // every call at once) would otherwise reach it with the
            // requests still in its accept queue, which an h2 server counts
            // against the connection (ENHANCE_YOUR_CALM).
            if let Some(sent) = half.sent_at
                && crate::turn::now().saturating_duration_since(sent) < HOLD_YOUNG_RESETS
            {
                // Its slot is freed now: holding it until the reset goes out
                // sent more of a burst's calls through the h2 path and
                // tripped the backend more often, not less.
                let half = self.remove(stream)?;
                self.held_resets.push_back((sent + HOLD_YOUNG_RESETS, stream));
                return Some(half);
            }
            return self.reset(stream, Reason::CANCEL);
        }
        let mut half = self.remove(stream)?;
        if self.closed || half.end_sent {
            return Some(half);
        }
        half.end_sent = true;
        if let Some(telemetry) = &half.telemetry {
            telemetry.record.finish(status);
        }
        if !half.queue.is_empty() {
            // Trailers would have to wait behind data the client is not
            // reading: the stream is reset instead, as the h2 path does.
            frame::write_rst_stream(&mut self.out, stream, Reason::CANCEL);
            return Some(half);
        }
        write_status(
            &mut self.out,
            &mut self.encoder,
            self.max_frame,
            stream,
            status,
            !half.headers_sent,
        );
        if !half.end_received {
            // The answer is complete; the client need send no more (RFC 9113 §8.1).
            frame::write_rst_stream(&mut self.out, stream, Reason::NO_ERROR);
        }
        Some(half)
    }

    /// Answers a client stream that never reached a backend with a
    /// trailers-only response carrying `status`.
    pub(crate) fn respond(&mut self, stream: u32, status: &Status, client_ended: bool) {
        if self.closed {
            return;
        }
        write_status(&mut self.out, &mut self.encoder, self.max_frame, stream, status, true);
        if !client_ended {
            frame::write_rst_stream(&mut self.out, stream, Reason::NO_ERROR);
        }
    }

    pub(crate) fn half(&self, stream: u32) -> Option<&Half> {
        self.streams.get(&stream)
    }

    pub(crate) fn half_mut(&mut self, stream: u32) -> Option<&mut Half> {
        self.streams.get_mut(&stream)
    }

    /// Forgets a stream (without telling the peer); returns it.
    pub(crate) fn remove(&mut self, stream: u32) -> Option<Half> {
        if !self.blocked.is_empty() {
            self.blocked.retain(|s| *s != stream);
        }
        let half = self.streams.remove(&stream)?;
        if let Some(at) = half.timer_at {
            self.deadlines.remove(&(at, stream));
        }
        if half.slot.is_some()
            && let Some(endpoint) = self.endpoint.upgrade()
        {
            endpoint.count_code(half.code.unwrap_or(Code::Cancelled));
            endpoint.end_call(half.outcome, half.probe);
        }
        Some(half)
    }

    /// Forgets a stream once both its directions have ended.
    fn remove_if_done(&mut self, stream: u32) -> Option<Half> {
        match self.streams.get(&stream) {
            Some(half) if half.end_sent && half.end_received => self.remove(stream),
            _ => None,
        }
    }

    /// Forgets `stream`, which the peer reset. For an upstream leg, a
    /// refusal (the backend never processed it) or a cancel is not held
    /// against the endpoint.
    pub(crate) fn reset_by_peer(&mut self, stream: u32, reason: Reason) -> Option<Half> {
        if let Some(half) = self.streams.get_mut(&stream) {
            half.code = Some(Code::from_h2_reason(reason));
            if matches!(reason, Reason::REFUSED_STREAM | Reason::CANCEL) {
                half.outcome = Outcome::Neutral;
            }
        }
        self.remove(stream)
    }

    /// Sets the timers of the call on `stream`: its deadline (and whether
    /// the client set it), and for streams the idle limit.
    pub(crate) fn set_timers(
        &mut self,
        stream: u32,
        deadline: Option<(Instant, bool)>,
        idle: Option<std::time::Duration>,
        now: Instant,
    ) {
        if let Some(half) = self.streams.get_mut(&stream) {
            half.deadline = deadline;
            half.idle = idle;
            half.last_activity = idle.map(|_| now);
            self.arm(stream);
        }
    }

    /// Puts the call's next timer in the index.
    fn arm(&mut self, stream: u32) {
        let Some(half) = self.streams.get_mut(&stream) else {
            return;
        };
        let idle_due = half.idle.zip(half.last_activity).map(|(limit, last)| last + limit);
        let due = match (half.deadline.map(|(at, _)| at), idle_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(old) = half.timer_at.take() {
            self.deadlines.remove(&(old, stream));
        }
        if let Some(due) = due {
            half.timer_at = Some(due);
            self.deadlines.insert((due, stream));
        }
    }

    /// Notes data moving on a stream with an idle limit.
    fn touch(half: &mut Half) {
        if half.idle.is_some() {
            half.last_activity = Some(crate::turn::now());
        }
    }

    /// The soonest deadline of a call in flight.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The calls whose timer ended them by `now`, and why; the caller ends
    /// them. A stream that moved data since its idle timer was set is
    /// re-armed instead.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(u32, Expiry)> {
        let mut expired = Vec::new();
        let mut rearm = Vec::new();
        while let Some(&(at, stream)) = self.deadlines.first()
            && at <= now
        {
            self.deadlines.pop_first();
            let Some(half) = self.streams.get_mut(&stream) else {
                continue;
            };
            half.timer_at = None;
            if let Some((deadline, from_client)) = half.deadline
                && deadline <= now
            {
                expired.push((stream, Expiry::Deadline { from_client }));
            } else if let (Some(limit), Some(last)) = (half.idle, half.last_activity)
                && last + limit <= now
            {
                expired.push((stream, Expiry::Idle(limit)));
            } else {
                rearm.push(stream);
            }
        }
        for stream in rearm {
            self.arm(stream);
        }
        expired
    }

    /// Notes the round trip of `stream`'s request on its endpoint, at the
    /// first header block of the answer.
    pub(crate) fn answered(&mut self, stream: u32) {
        if let Some(sent) = self.streams.get_mut(&stream).and_then(|h| h.sent_at.take())
            && let Some(endpoint) = self.endpoint.upgrade()
        {
            endpoint.observe_rtt_since(sent);
        }
    }

    /// Forgets the streams above `last` (a GOAWAY's last stream id: the
    /// peer never processed them) and returns them.
    pub(crate) fn streams_above(&mut self, last: u32) -> Vec<Half> {
        let above: Vec<u32> = self.streams.keys().copied().filter(|s| *s > last).collect();
        for stream in &above {
            if let Some(half) = self.streams.get_mut(stream) {
                half.code = Some(Code::Unavailable);
                half.outcome = Outcome::Neutral;
            }
        }
        above.into_iter().filter_map(|s| self.remove(s)).collect()
    }

    /// Notes that the peer ended its direction of `stream`; returns the
    /// stream if that finished it.
    pub(crate) fn received_end(&mut self, stream: u32) -> Option<Half> {
        let half = self.streams.get_mut(&stream)?;
        half.end_received = true;
        self.remove_if_done(stream)
    }

    /// Sends data on `stream`, as much as the windows allow; the rest waits
    /// in the stream's queue. Bytes that went out are credited to the other
    /// leg through `credits`. Returns the stream if this ended it.
    pub(crate) fn send_data(&mut self, stream: u32, data: Bytes, end: bool, credits: &mut Vec<Credit>) -> Option<Half> {
        if self.closed {
            return None;
        }
        let half = self.streams.get_mut(&stream)?;
        if half.end_sent {
            return None;
        }
        Self::touch(half);
        if let Some(telemetry) = &mut half.telemetry {
            telemetry.outbound.data(&data);
        }
        // The common case, nothing queued and room for all of it: one frame
        // written at once, without a queue to allocate.
        let room = MAX_BUFFER.saturating_sub(self.out.len() + self.backlog);
        let allowed = (half.window.min(self.window).max(0) as usize)
            .min(room)
            .min(self.max_frame);
        if half.queue.is_empty() && !data.is_empty() && data.len() <= allowed {
            frame::write_data(&mut self.out, stream, end, &data);
            half.end_sent = end;
            half.window -= data.len() as i64;
            self.window -= data.len() as i64;
            Self::owe(half, data.len() as u32, credits);
            return self.remove_if_done(stream);
        }
        if !data.is_empty() {
            half.queue.push_back(Queued::Data(data));
        }
        if end {
            half.queue.push_back(Queued::End);
        }
        self.flush(stream, credits);
        self.remove_if_done(stream)
    }

    /// Sends a header block on `stream` (behind any data still queued).
    /// Returns the stream if this ended it.
    pub(crate) fn send_headers(&mut self, stream: u32, fields: &Fields, end: bool) -> Option<Half> {
        if self.closed {
            return None;
        }
        let half = self.streams.get_mut(&stream)?;
        if half.end_sent {
            return None;
        }
        if end && let Some(telemetry) = &half.telemetry {
            telemetry.finish_with(fields);
        }
        if let Some(replay) = half.replay.take() {
            // Answered: the backend took the call.
            Self::recycle(replay);
        }
        let half = self.streams.get_mut(&stream)?;
        if half.queue.is_empty() {
            half.headers_sent = true;
            half.end_sent = end;
            write_block(&mut self.out, &mut self.encoder, self.max_frame, stream, fields, end);
        } else {
            half.queue.push_back(Queued::Headers(fields.clone(), end));
        }
        self.remove_if_done(stream)
    }

    /// Resets `stream` and forgets it.
    pub(crate) fn reset(&mut self, stream: u32, reason: Reason) -> Option<Half> {
        let half = self.remove(stream)?;
        if !self.closed {
            frame::write_rst_stream(&mut self.out, stream, reason);
        }
        Some(half)
    }

    /// Notes what the task holds unwritten; when the socket made room,
    /// streams waiting for it send on.
    pub(crate) fn set_backlog(&mut self, backlog: usize, credits: &mut Vec<Credit>) {
        let grew = backlog > self.backlog;
        self.backlog = backlog;
        if !grew {
            self.release_blocked(credits);
        }
    }

    pub(crate) fn backlog(&self) -> usize {
        self.backlog
    }

    fn room(&self) -> usize {
        MAX_BUFFER.saturating_sub(self.out.len() + self.backlog)
    }

    /// Sends on from streams waiting for connection window or output room,
    /// oldest first, while both last.
    fn release_blocked(&mut self, credits: &mut Vec<Credit>) {
        while self.window > 0 && self.room() > 0 {
            let Some(blocked) = self.blocked.pop_front() else { break };
            self.flush(blocked, credits);
            self.remove_if_done(blocked);
        }
    }

    /// Applies the peer's WINDOW_UPDATE.
    pub(crate) fn window_update(
        &mut self,
        stream: u32,
        increment: u32,
        credits: &mut Vec<Credit>,
    ) -> Result<(), FlowError> {
        let increment = i64::from(increment);
        if stream == 0 {
            if self.window + increment > i64::from(MAX_WINDOW) {
                return Err(FlowError {
                    stream: None,
                    reason: Reason::FLOW_CONTROL_ERROR,
                    what: "connection window above 2^31-1",
                });
            }
            self.window += increment;
            self.release_blocked(credits);
            return Ok(());
        }
        // A WINDOW_UPDATE for a stream already closed is allowed (§6.9).
        let Some(half) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if half.window + increment > i64::from(MAX_WINDOW) {
            return Err(FlowError {
                stream: Some(stream),
                reason: Reason::FLOW_CONTROL_ERROR,
                what: "stream window above 2^31-1",
            });
        }
        half.window += increment;
        self.flush(stream, credits);
        self.remove_if_done(stream);
        Ok(())
    }

    /// Applies the peer's SETTINGS and acknowledges them.
    pub(crate) fn apply_settings(&mut self, settings: &Settings, credits: &mut Vec<Credit>) -> Result<(), FlowError> {
        if let Some(size) = settings.header_table_size {
            self.encoder.set_max_table_size(size as usize);
        }
        if let Some(size) = settings.max_frame_size {
            self.max_frame = size as usize;
        }
        if let Some(initial) = settings.initial_window_size {
            // A change applies to every open stream, and may leave windows
            // negative (RFC 9113 §6.9.2).
            let delta = i64::from(initial) - self.initial_window;
            self.initial_window = i64::from(initial);
            let mut grown = Vec::new();
            for (&stream, half) in &mut self.streams {
                if half.window + delta > i64::from(MAX_WINDOW) {
                    return Err(FlowError {
                        stream: None,
                        reason: Reason::FLOW_CONTROL_ERROR,
                        what: "SETTINGS_INITIAL_WINDOW_SIZE takes a stream window above 2^31-1",
                    });
                }
                half.window += delta;
                if delta > 0 && !half.queue.is_empty() {
                    grown.push(stream);
                }
            }
            for stream in grown {
                self.flush(stream, credits);
                self.remove_if_done(stream);
            }
        }
        if !self.closed {
            frame::write_settings_ack(&mut self.out);
        }
        Ok(())
    }

    /// Owes the peer `bytes` it sent on `stream` that have now been
    /// forwarded; writes WINDOW_UPDATEs once half a window is owed. A
    /// stream the peer has ended needs no more window.
    pub(crate) fn credit(&mut self, stream: u32, bytes: u32) {
        if let Some(replay) = self.streams.get_mut(&stream).and_then(|h| h.replay.as_mut()) {
            replay.credited = replay.credited.saturating_add(bytes);
        }
        self.grant(stream, bytes);
    }

    /// Owes the peer `bytes` of window on `stream` and the connection (data
    /// forwarded, dropped, or padding).
    fn grant(&mut self, stream: u32, bytes: u32) {
        if self.closed || bytes == 0 {
            return;
        }
        self.owed += bytes;
        if self.owed >= self.receive.connection / 2 {
            frame::write_window_update(&mut self.out, 0, self.owed);
            self.recv_window += i64::from(self.owed);
            self.owed = 0;
        }
        let Some(half) = self.streams.get_mut(&stream) else {
            return;
        };
        if half.end_received {
            return;
        }
        half.owed += bytes;
        if half.owed >= self.receive.stream / 2 {
            frame::write_window_update(&mut self.out, stream, half.owed);
            half.recv_window += i64::from(half.owed);
            half.owed = 0;
        }
    }

    /// Writes what the windows allow from the front of `stream`'s queue.
    fn flush(&mut self, stream: u32, credits: &mut Vec<Credit>) {
        let Some(half) = self.streams.get_mut(&stream) else {
            return;
        };
        let mut sent = 0u32;
        while let Some(front) = half.queue.front_mut() {
            match front {
                Queued::Data(data) => {
                    let room = MAX_BUFFER.saturating_sub(self.out.len() + self.backlog);
                    let allowed = (half.window.min(self.window).max(0) as usize).min(room);
                    if allowed == 0 {
                        if (self.window <= 0 || room == 0) && !self.blocked.contains(&stream) {
                            self.blocked.push_back(stream);
                        }
                        break;
                    }
                    let take = data.len().min(allowed).min(self.max_frame);
                    let chunk = data.split_to(take);
                    let last = data.is_empty();
                    if last {
                        half.queue.pop_front();
                    }
                    // END_STREAM rides on the last data frame when the end is next.
                    let end = last && matches!(half.queue.front(), Some(Queued::End));
                    if end {
                        half.queue.pop_front();
                        half.end_sent = true;
                    }
                    frame::write_data(&mut self.out, stream, end, &chunk);
                    half.window -= take as i64;
                    self.window -= take as i64;
                    sent += take as u32;
                }
                Queued::End => {
                    half.queue.pop_front();
                    half.end_sent = true;
                    frame::write_data(&mut self.out, stream, true, &[]);
                }
                Queued::Headers(..) => {
                    let Some(Queued::Headers(fields, end)) = half.queue.pop_front() else {
                        break;
                    };
                    half.headers_sent = true;
                    half.end_sent = end;
                    write_block(&mut self.out, &mut self.encoder, self.max_frame, stream, &fields, end);
                }
            }
        }
        Self::owe(half, sent, credits);
    }

    /// `sent` bytes of the peer leg's data left here: owed back to its
    /// sender, less what was credited before it was sent.
    fn owe(half: &mut Half, mut sent: u32, credits: &mut Vec<Credit>) {
        let already = sent.min(half.credited_before);
        half.credited_before -= already;
        sent -= already;
        if sent > 0 {
            credits.push(Credit {
                side: half.peer.clone(),
                stream: half.peer_stream,
                bytes: sent,
            });
        }
    }
}

/// Writes `status` as trailers, or as a whole trailers-only response.
fn write_status(
    out: &mut Vec<u8>,
    encoder: &mut hpack::Encoder,
    max_frame: usize,
    stream: u32,
    status: &Status,
    trailers_only: bool,
) {
    let mut fields = Fields::default();
    if trailers_only {
        fields.push(b":status", b"200");
        fields.push(b"content-type", b"application/grpc");
    }
    for (name, value) in &status.to_trailers() {
        fields.push(name.as_str().as_bytes(), value.as_bytes());
    }
    write_block(out, encoder, max_frame, stream, &fields, true);
}

/// Encodes a header block into HEADERS (and, past the peer's frame size,
/// CONTINUATION) frames.
fn write_block(
    out: &mut Vec<u8>,
    encoder: &mut hpack::Encoder,
    max_frame: usize,
    stream: u32,
    fields: &Fields,
    end: bool,
) {
    let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
    let start = frame::start_frame(out, kind::HEADERS, flags, stream);
    encoder.begin_block(out);
    for (name, value) in fields.iter() {
        encoder.encode(name, value, out);
    }
    let block_len = out.len() - start - frame::HEAD_LEN;
    if block_len <= max_frame {
        frame::finish_frame(out, start);
        return;
    }
    // Rare: a block larger than one frame. Re-cut it into HEADERS and
    // CONTINUATION frames of at most `max_frame` bytes.
    let block = out.split_off(start + frame::HEAD_LEN);
    out.truncate(start);
    let mut pieces = block.chunks(max_frame.max(1)).peekable();
    let mut first = true;
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        let (kind, mut flags) = match first {
            true => (kind::HEADERS, if end { flag::END_STREAM } else { 0 }),
            false => (kind::CONTINUATION, 0),
        };
        if last {
            flags |= flag::END_HEADERS;
        }
        frame::write_head(out, piece.len(), kind, flags, stream);
        out.extend_from_slice(piece);
        first = false;
    }
}

#[cfg(test)]
#[path = "side_tests.rs"]
mod tests;
