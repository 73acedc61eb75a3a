//! The task of one relay connection, client or upstream: it reads frames
//! and acts on them, and writes out what its [`Side`] has gathered.
//!
//! What every HTTP/2 connection does the same way lives here: cutting and
//! checking frames, gathering and decoding header blocks, SETTINGS, PING,
//! WINDOW_UPDATE, RST_STREAM, and forwarding DATA to the call's other leg.
//! What differs by role (opening calls on a client connection, noting a
//! backend's GOAWAY) is the [`Handler`]'s.
//!
//! A read can carry frames for many calls. Their other legs are woken once
//! per read, not once per frame, so each of them writes the frames of many
//! calls with one system call.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::BytesMut;
use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, BlockAssembler, Frame, FrameError, Head, Settings};
use super::hpack::{self, HpackError};
use super::side::{Credit, Fields, FlowError, Side};
use crate::status::{Code, Status};

/// Stop reading from a peer that leaves this much of our output unread:
/// what it sends next would only pile up more.
const MAX_UNWRITTEN: usize = 1 << 20;

/// What a connection's role decides.
pub(crate) trait Handler {
    /// A whole header block arrived for `stream`, decoded into `fields`.
    fn headers(
        &mut self,
        side: &Arc<Side>,
        stream: u32,
        end_stream: bool,
        fields: &Fields,
        wakes: &mut Wakes,
    ) -> Result<(), FrameError>;

    /// A header block too large for the header-list limit arrived.
    fn oversized_headers(&mut self, side: &Arc<Side>, stream: u32, wakes: &mut Wakes);

    /// The peer's SETTINGS, after the side applied them.
    fn settings(&mut self, _settings: &Settings) {}

    /// The peer's GOAWAY.
    fn goaway(&mut self, side: &Arc<Side>, last_stream: u32, reason: Reason, wakes: &mut Wakes);

    /// What a call hears when this connection ends under it.
    fn lost(&self) -> Status;

    /// The connection is ending: called before its calls are told.
    fn closing(&mut self) {}

    /// The peer acknowledged a PING this end sent.
    fn pong(&mut self) {}

    /// The peer reset a stream that was open here.
    fn reset_by_peer(&mut self, _side: &Arc<Side>, _half: &super::side::Half) {}

    /// Runs the role's timers; called on every turn of the connection's
    /// task. Returns whether it did anything (so the task turns again).
    fn poll_timers(&mut self, _side: &Arc<Side>, _cx: &mut std::task::Context<'_>, _wakes: &mut Wakes) -> bool {
        false
    }
}

/// Sides to wake once the current read is handled.
#[derive(Default)]
pub(crate) struct Wakes(Vec<Arc<Side>>);

impl Wakes {
    pub(crate) fn add(&mut self, side: &Arc<Side>) {
        if !self.0.iter().any(|s| Arc::ptr_eq(s, side)) {
            self.0.push(side.clone());
        }
    }

    fn wake_all(&mut self) {
        for side in self.0.drain(..) {
            side.wake();
        }
    }
}

/// Receive limits this end announced.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadLimits {
    pub(crate) max_frame_size: u32,
    pub(crate) max_header_list_size: u32,
    pub(crate) header_table_size: u32,
}

/// Drives one connection until either end closes it.
pub(crate) async fn run<IO, H>(mut io: IO, side: Arc<Side>, mut handler: H, limits: ReadLimits, expect_preface: bool)
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: Handler,
{
    let mut reader = Reader {
        buf: BytesMut::with_capacity(16 << 10),
        preface: expect_preface,
        decoder: hpack::Decoder::new(limits.header_table_size as usize, limits.max_header_list_size as usize),
        assembler: BlockAssembler::default(),
        limits,
        fields: Fields::default(),
        credits: Vec::new(),
        wakes: Wakes::default(),
        last_stream: 0,
    };
    let mut unwritten: Vec<u8> = Vec::new();
    let mut written = 0;
    // Resets held back (see `SideState::fail`): when the next one is due,
    // read while the side is locked anyway, and the timer for it.
    let mut held_due: Option<tokio::time::Instant> = None;
    let mut held_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    // The socket refused a write (the peer reset the connection): what it
    // sent before the reset is still read — a backend's GOAWAY saying why
    // it closed arrives just before its reset — and then the task ends.
    let mut write_failed = false;
    poll_fn(|cx| {
        // Everything this poll does sees one time (`crate::turn`).
        let _turn = crate::turn::Turn::start();
        side.register(cx.waker());
        loop {
            let mut progress = false;
            // Write what is gathered, all of it in one go where the socket takes it.
            if written == unwritten.len() {
                unwritten.clear();
                written = 0;
                let mut state = side.lock();
                std::mem::swap(&mut unwritten, &mut state.out);
                held_due = state.next_held_reset();
                // Counted at once, so other tasks see the room it takes.
                let backlog = unwritten.len();
                state.set_backlog(backlog, &mut reader.credits);
            }
            while written < unwritten.len() && !write_failed {
                match Pin::new(&mut io).poll_write(cx, &unwritten[written..]) {
                    Poll::Ready(Ok(n)) if n > 0 => {
                        written += n;
                        progress = true;
                    }
                    Poll::Ready(_) => {
                        write_failed = true;
                        progress = true;
                    }
                    Poll::Pending => break,
                }
            }
            if write_failed {
                written = unwritten.len();
            }
            let all_written = written == unwritten.len();
            if all_written
                && !unwritten.is_empty()
                && !write_failed
                // TLS holds records until flushed.
                && let Poll::Ready(Err(_)) = Pin::new(&mut io).poll_flush(cx)
            {
                return Poll::Ready(());
            }
            let closed = {
                let mut state = side.lock();
                let backlog = unwritten.len() - written;
                if state.backlog() != backlog {
                    // The socket took some: streams waiting for room send on.
                    state.set_backlog(backlog, &mut reader.credits);
                }
                // Closed, or draining with nothing left to carry: done once written.
                state.is_closed() || (state.draining && state.stream_count() == 0 && state.out.is_empty())
            };
            reader.apply_credits();
            if closed && all_written {
                return Poll::Ready(());
            }
            if !closed && unwritten.len() - written < MAX_UNWRITTEN {
                reader.buf.reserve(16 << 10);
                match tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut reader.buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(()),
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        if let Err(error) = reader.process(&side, &mut handler) {
                            reader.connection_error(&side, &error);
                        }
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending if write_failed => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            if handler.poll_timers(&side, cx, &mut reader.wakes) {
                progress = true;
            }
            if let Some(due) = held_due {
                if held_timer.as_ref().is_none_or(|timer| timer.deadline() != due) {
                    held_timer = Some(Box::pin(tokio::time::sleep_until(due)));
                }
                if let Some(timer) = &mut held_timer
                    && timer.as_mut().poll(cx).is_ready()
                {
                    held_timer = None;
                    held_due = side.lock().release_held_resets(crate::turn::now());
                    progress = true;
                }
            }
            reader.wakes.wake_all();
            if !progress {
                return Poll::Pending;
            }
        }
    })
    .await;
    // Every call still open here hears that the connection is gone.
    handler.closing();
    let halves = side.lock().close();
    let status = handler.lost();
    let mut wakes = Wakes::default();
    for (_, half) in halves {
        half.peer.lock().fail(half.peer_stream, &status);
        wakes.add(&half.peer);
    }
    wakes.wake_all();
}

/// The read half of a connection's state: private to its task.
struct Reader {
    buf: BytesMut,
    /// The client preface is still to come (server role).
    preface: bool,
    decoder: hpack::Decoder,
    assembler: BlockAssembler,
    limits: ReadLimits,
    /// Scratch for decoded header blocks.
    fields: Fields,
    /// Scratch for credits owed to other legs.
    credits: Vec<Credit>,
    wakes: Wakes,
    /// The highest stream id the peer used, for our GOAWAY.
    last_stream: u32,
}

impl Reader {
    /// Handles every whole frame in the buffer.
    fn process<H: Handler>(&mut self, side: &Arc<Side>, handler: &mut H) -> Result<(), FrameError> {
        if self.preface {
            if self.buf.len() < frame::PREFACE.len() {
                return match frame::PREFACE.starts_with(&self.buf) {
                    true => Ok(()),
                    false => Err(protocol_error("not the HTTP/2 client preface")),
                };
            }
            if &self.buf[..frame::PREFACE.len()] != frame::PREFACE {
                return Err(protocol_error("not the HTTP/2 client preface"));
            }
            let _ = self.buf.split_to(frame::PREFACE.len());
            self.preface = false;
        }
        while let Some((head, payload)) = frame::next_frame(&mut self.buf, self.limits.max_frame_size)? {
            if let Err(error) = self.frame(side, handler, head, payload) {
                let Some(stream) = error.stream else {
                    return Err(error);
                };
                self.stream_error(side, stream, &error);
            }
        }
        Ok(())
    }

    fn frame<H: Handler>(
        &mut self,
        side: &Arc<Side>,
        handler: &mut H,
        head: Head,
        payload: BytesMut,
    ) -> Result<(), FrameError> {
        let payload = payload.freeze();
        let frame = frame::parse(&head, &payload)?;
        self.assembler.check_order(&frame)?;
        match frame {
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len,
            } => {
                if stream > self.last_stream {
                    return Err(protocol_error("DATA on a stream that was never opened"));
                }
                let data = payload.slice_ref(data);
                let link = side
                    .lock()
                    .received_data(stream, flow_len, &data, end_stream)
                    .map_err(flow_error)?;
                // A stream already gone (reset, or ended on the other leg):
                // its data was dropped and its window given back.
                let Some((peer, peer_stream)) = link else {
                    self.wakes.add(side);
                    return Ok(());
                };
                peer.lock().send_data(peer_stream, data, end_stream, &mut self.credits);
                self.wakes.add(&peer);
                self.apply_credits();
                Ok(())
            }
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                fragment,
            } => {
                self.last_stream = self.last_stream.max(stream);
                if end_headers {
                    // The usual case: the whole block in one frame, decoded
                    // where it lies.
                    return self.block(side, handler, stream, end_stream, fragment);
                }
                let max_block = self.max_block();
                self.assembler
                    .headers(stream, end_stream, end_headers, fragment, max_block)?;
                Ok(())
            }
            Frame::Continuation {
                end_headers, fragment, ..
            } => {
                let max_block = self.max_block();
                match self.assembler.continuation(end_headers, fragment, max_block)? {
                    Some(block) => {
                        let (stream, end_stream) = (block.stream, block.end_stream);
                        let block = block.block.to_vec();
                        self.block(side, handler, stream, end_stream, &block)
                    }
                    None => Ok(()),
                }
            }
            Frame::RstStream { stream, reason } => {
                let half = side.lock().reset_by_peer(stream, reason);
                if let Some(half) = half {
                    handler.reset_by_peer(side, &half);
                    let status = Status::new(Code::from_h2_reason(reason), format!("stream reset: {reason}"));
                    let mut peer = half.peer.lock();
                    match reason {
                        Reason::REFUSED_STREAM => peer.fail_unprocessed(half.peer_stream, &status),
                        _ => drop(peer.fail(half.peer_stream, &status)),
                    }
                    drop(peer);
                    self.wakes.add(&half.peer);
                }
                Ok(())
            }
            Frame::Settings(settings) => {
                side.lock()
                    .apply_settings(&settings, &mut self.credits)
                    .map_err(flow_error)?;
                handler.settings(&settings);
                self.wakes.add(side);
                self.apply_credits();
                Ok(())
            }
            Frame::SettingsAck | Frame::Priority | Frame::Unknown => Ok(()),
            Frame::Ping { ack, payload } => {
                if ack {
                    handler.pong();
                } else {
                    frame::write_ping(&mut side.lock().out, true, payload);
                    self.wakes.add(side);
                }
                Ok(())
            }
            Frame::WindowUpdate { stream, increment } => {
                side.lock()
                    .window_update(stream, increment, &mut self.credits)
                    .map_err(flow_error)?;
                self.wakes.add(side);
                self.apply_credits();
                Ok(())
            }
            Frame::GoAway {
                last_stream, reason, ..
            } => {
                handler.goaway(side, last_stream, reason, &mut self.wakes);
                Ok(())
            }
            Frame::PushPromise { .. } => Err(protocol_error(
                "PUSH_PROMISE, which this end disabled or cannot receive",
            )),
        }
    }

    /// The wire bytes a header block may take: its decoded size is bounded
    /// by the header-list limit, and HPACK never makes a field longer than
    /// twice its size plus a few bytes.
    fn max_block(&self) -> usize {
        2 * self.limits.max_header_list_size as usize + 1024
    }

    fn block<H: Handler>(
        &mut self,
        side: &Arc<Side>,
        handler: &mut H,
        stream: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), FrameError> {
        self.fields.clear();
        let fields = &mut self.fields;
        match self.decoder.decode(block, |name, value| fields.push(name, value)) {
            Ok(()) => {}
            Err(HpackError::ListTooLarge) => {
                handler.oversized_headers(side, stream, &mut self.wakes);
                return Ok(());
            }
            Err(_) => {
                return Err(FrameError {
                    reason: Reason::COMPRESSION_ERROR,
                    stream: None,
                    what: "header block does not decode",
                });
            }
        }
        let fields = std::mem::take(&mut self.fields);
        let result = handler.headers(side, stream, end_stream, &fields, &mut self.wakes);
        self.fields = fields;
        self.apply_credits();
        result
    }

    /// Credits other legs for data this read moved out of their queues.
    fn apply_credits(&mut self) {
        for credit in self.credits.drain(..) {
            credit.side.lock().credit(credit.stream, credit.bytes);
            self.wakes.add(&credit.side);
        }
    }

    /// Resets one stream the peer broke the rules on; the call's other leg fails.
    fn stream_error(&mut self, side: &Arc<Side>, stream: u32, error: &FrameError) {
        tracing::debug!(%error, "HTTP/2 stream error");
        let half = side.lock().reset(stream, error.reason);
        if let Some(half) = half {
            let status = Status::new(Code::Internal, format!("HTTP/2 stream error: {error}"));
            half.peer.lock().fail(half.peer_stream, &status);
            self.wakes.add(&half.peer);
        } else {
            frame::write_rst_stream(&mut side.lock().out, stream, error.reason);
        }
        self.wakes.add(side);
    }

    /// Ends the connection with a GOAWAY saying why.
    fn connection_error(&mut self, side: &Arc<Side>, error: &FrameError) {
        tracing::debug!(%error, "HTTP/2 connection error");
        let mut state = side.lock();
        frame::write_goaway(&mut state.out, self.last_stream, error.reason, error.what.as_bytes());
        state.draining = true;
        let halves = state.close();
        drop(state);
        let status = Status::new(Code::Internal, format!("HTTP/2 connection error: {error}"));
        for (_, half) in halves {
            half.peer.lock().fail(half.peer_stream, &status);
            self.wakes.add(&half.peer);
        }
    }
}

fn protocol_error(what: &'static str) -> FrameError {
    FrameError {
        reason: Reason::PROTOCOL_ERROR,
        stream: None,
        what,
    }
}

fn flow_error(error: FlowError) -> FrameError {
    FrameError {
        reason: error.reason,
        stream: error.stream,
        what: error.what,
    }
}

/// A header block on a connection where this end is the server: on a stream
/// already open, the request's trailers, which end it (passed on to the
/// other leg); otherwise a new stream, whose id must be odd and above every
/// one before (`last_opened`, updated). `Ok(true)`: a new stream to open.
pub(crate) fn request_headers(
    side: &Arc<Side>,
    stream: u32,
    end_stream: bool,
    fields: &Fields,
    last_opened: &mut u32,
    wakes: &mut Wakes,
) -> Result<bool, FrameError> {
    let link = side
        .lock()
        .half(stream)
        .map(|half| (half.peer.clone(), half.peer_stream));
    if let Some((peer, peer_stream)) = link {
        if !end_stream {
            return Err(FrameError {
                reason: Reason::PROTOCOL_ERROR,
                stream: Some(stream),
                what: "a second header block that does not end the stream",
            });
        }
        side.lock().received_end(stream);
        peer.lock().send_headers(peer_stream, fields, true);
        wakes.add(&peer);
        return Ok(false);
    }
    if stream.is_multiple_of(2) || stream <= *last_opened {
        return Err(FrameError {
            reason: Reason::PROTOCOL_ERROR,
            stream: None,
            what: "HEADERS on a stream id the client may not open",
        });
    }
    *last_opened = stream;
    Ok(true)
}
