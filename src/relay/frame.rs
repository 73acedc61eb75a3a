//! HTTP/2 frames (RFC 9113 §4 and §6) as the relay reads and writes them:
//! cutting frames off a read buffer, checking each against the rules for its
//! type, assembling header blocks split over CONTINUATION frames, and
//! writing frames into a connection's output buffer.
//!
//! Every check here is one a peer can trip, so each failure says which
//! HTTP/2 error it is and whether it ends the stream or the connection
//! (RFC 9113 §5.4). Payloads are borrowed from the read buffer; nothing is
//! copied until the relay writes a frame out.

use std::fmt;

use bytes::{Buf, BytesMut};
use h2::Reason;

/// What a client sends before its first frame (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub(crate) const HEAD_LEN: usize = 9;
/// The smallest SETTINGS_MAX_FRAME_SIZE, and the default (RFC 9113 §6.5.2).
pub(crate) const DEFAULT_MAX_FRAME_SIZE: u32 = 1 << 14;
/// The largest frame size a peer may allow (2^24 - 1).
pub(crate) const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window (2^31 - 1, RFC 9113 §6.9.1).
pub(crate) const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The initial flow-control window of every stream and connection.
pub(crate) const DEFAULT_WINDOW: u32 = 65_535;

/// Frame types (RFC 9113 §6).
pub(crate) mod kind {
    pub(crate) const DATA: u8 = 0x0;
    pub(crate) const HEADERS: u8 = 0x1;
    pub(crate) const PRIORITY: u8 = 0x2;
    pub(crate) const RST_STREAM: u8 = 0x3;
    pub(crate) const SETTINGS: u8 = 0x4;
    pub(crate) const PUSH_PROMISE: u8 = 0x5;
    pub(crate) const PING: u8 = 0x6;
    pub(crate) const GOAWAY: u8 = 0x7;
    pub(crate) const WINDOW_UPDATE: u8 = 0x8;
    pub(crate) const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub(crate) mod flag {
    pub(crate) const END_STREAM: u8 = 0x1;
    pub(crate) const ACK: u8 = 0x1;
    pub(crate) const END_HEADERS: u8 = 0x4;
    pub(crate) const PADDED: u8 = 0x8;
    pub(crate) const PRIORITY: u8 = 0x20;
}

/// SETTINGS parameter identifiers (RFC 9113 §6.5.2).
pub(crate) mod setting {
    pub(crate) const HEADER_TABLE_SIZE: u16 = 0x1;
    pub(crate) const ENABLE_PUSH: u16 = 0x2;
    pub(crate) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(crate) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(crate) const MAX_FRAME_SIZE: u16 = 0x5;
    pub(crate) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// A frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) length: usize,
    pub(crate) kind: u8,
    pub(crate) flags: u8,
    /// The stream identifier, reserved bit cleared.
    pub(crate) stream: u32,
}

impl Head {
    /// Reads a frame header from the first [`HEAD_LEN`] bytes of `bytes`.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Head> {
        let head: &[u8; HEAD_LEN] = bytes.get(..HEAD_LEN)?.try_into().ok()?;
        Some(Head {
            length: u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize,
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & MAX_WINDOW,
        })
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// A frame the peer broke the rules with, and what that costs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FrameError {
    /// The HTTP/2 error code to send.
    pub(crate) reason: Reason,
    /// `Some(stream)` when only that stream is reset (RST_STREAM); `None`
    /// when the connection is closed (GOAWAY).
    pub(crate) stream: Option<u32>,
    /// What was wrong, for logs and the GOAWAY's debug data.
    pub(crate) what: &'static str,
}

impl FrameError {
    fn connection(reason: Reason, what: &'static str) -> Self {
        FrameError {
            reason,
            stream: None,
            what,
        }
    }

    fn stream(stream: u32, reason: Reason, what: &'static str) -> Self {
        FrameError {
            reason,
            stream: Some(stream),
            what,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.stream {
            Some(stream) => write!(f, "{} on stream {stream} ({:?})", self.what, self.reason),
            None => write!(f, "{} ({:?})", self.what, self.reason),
        }
    }
}

impl std::error::Error for FrameError {}

/// One frame, checked, its payload borrowed with padding and priority
/// fields removed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    Data {
        stream: u32,
        end_stream: bool,
        data: &'a [u8],
        /// What the frame counts against flow control: its whole payload,
        /// padding included (RFC 9113 §6.1).
        flow_len: u32,
    },
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        fragment: &'a [u8],
    },
    Priority,
    RstStream {
        stream: u32,
        reason: Reason,
    },
    Settings(Settings),
    SettingsAck,
    PushPromise {
        stream: u32,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        reason: Reason,
        debug: &'a [u8],
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        fragment: &'a [u8],
    },
    /// A frame type this end does not know, ignored as RFC 9113 §4.1 says.
    Unknown,
}

/// The parameters one SETTINGS frame carried; `None` where it said nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) header_table_size: Option<u32>,
    pub(crate) enable_push: Option<bool>,
    pub(crate) max_concurrent_streams: Option<u32>,
    pub(crate) initial_window_size: Option<u32>,
    pub(crate) max_frame_size: Option<u32>,
    pub(crate) max_header_list_size: Option<u32>,
}

impl Settings {
    fn parse(payload: &[u8]) -> Result<Settings, FrameError> {
        if !payload.len().is_multiple_of(6) {
            return Err(FrameError::connection(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS length is not a multiple of 6",
            ));
        }
        let mut settings = Settings::default();
        for entry in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match u16::from_be_bytes([entry[0], entry[1]]) {
                setting::HEADER_TABLE_SIZE => settings.header_table_size = Some(value),
                setting::ENABLE_PUSH => match value {
                    0 | 1 => settings.enable_push = Some(value == 1),
                    _ => {
                        return Err(FrameError::connection(
                            Reason::PROTOCOL_ERROR,
                            "SETTINGS_ENABLE_PUSH not 0 or 1",
                        ));
                    }
                },
                setting::MAX_CONCURRENT_STREAMS => settings.max_concurrent_streams = Some(value),
                setting::INITIAL_WINDOW_SIZE if value > MAX_WINDOW => {
                    return Err(FrameError::connection(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                    ));
                }
                setting::INITIAL_WINDOW_SIZE => settings.initial_window_size = Some(value),
                setting::MAX_FRAME_SIZE if !(DEFAULT_MAX_FRAME_SIZE..=MAX_MAX_FRAME_SIZE).contains(&value) => {
                    return Err(FrameError::connection(
                        Reason::PROTOCOL_ERROR,
                        "SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1",
                    ));
                }
                setting::MAX_FRAME_SIZE => settings.max_frame_size = Some(value),
                setting::MAX_HEADER_LIST_SIZE => settings.max_header_list_size = Some(value),
                // Unknown parameters are ignored (RFC 9113 §6.5.2).
                _ => {}
            }
        }
        Ok(settings)
    }

    /// Writes these settings as one SETTINGS frame.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let entries = [
            (setting::HEADER_TABLE_SIZE, self.header_table_size),
            (setting::ENABLE_PUSH, self.enable_push.map(u32::from)),
            (setting::MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (setting::INITIAL_WINDOW_SIZE, self.initial_window_size),
            (setting::MAX_FRAME_SIZE, self.max_frame_size),
            (setting::MAX_HEADER_LIST_SIZE, self.max_header_list_size),
        ];
        let count = entries.iter().filter(|(_, value)| value.is_some()).count();
        write_head(out, count * 6, kind::SETTINGS, 0, 0);
        for (id, value) in entries {
            if let Some(value) = value {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&value.to_be_bytes());
            }
        }
    }
}

/// Cuts the next whole frame off the front of `buf`: `Ok(None)` until one
/// has fully arrived. A frame longer than `max_frame_size` (what this end
/// advertised) is refused as soon as its header is in, before its payload
/// is buffered.
pub(crate) fn next_frame(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<(Head, BytesMut)>, FrameError> {
    let Some(head) = Head::parse(buf) else {
        return Ok(None);
    };
    if head.length > max_frame_size as usize {
        return Err(FrameError::connection(
            Reason::FRAME_SIZE_ERROR,
            "frame larger than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    if buf.len() < HEAD_LEN + head.length {
        return Ok(None);
    }
    buf.advance(HEAD_LEN);
    Ok(Some((head, buf.split_to(head.length))))
}

/// Checks one frame against the rules for its type and takes it apart.
pub(crate) fn parse<'a>(head: &Head, payload: &'a [u8]) -> Result<Frame<'a>, FrameError> {
    use FrameError as E;
    let stream = head.stream;
    let on_stream = |what| match stream {
        0 => Err(E::connection(Reason::PROTOCOL_ERROR, what)),
        _ => Ok(()),
    };
    let on_connection = |what| match stream {
        0 => Ok(()),
        _ => Err(E::connection(Reason::PROTOCOL_ERROR, what)),
    };
    let exact = |len: usize, what| match payload.len() == len {
        true => Ok(()),
        false => Err(E::connection(Reason::FRAME_SIZE_ERROR, what)),
    };
    match head.kind {
        kind::DATA => {
            on_stream("DATA on stream 0")?;
            Ok(Frame::Data {
                stream,
                end_stream: head.has(flag::END_STREAM),
                data: unpad(head, payload)?,
                // `next_frame` bounds every payload at 2^24 - 1.
                flow_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            })
        }
        kind::HEADERS => {
            on_stream("HEADERS on stream 0")?;
            let mut fragment = unpad(head, payload)?;
            if head.has(flag::PRIORITY) {
                let Some((priority, rest)) = fragment.split_first_chunk::<5>() else {
                    return Err(E::connection(
                        Reason::FRAME_SIZE_ERROR,
                        "HEADERS too short for its priority",
                    ));
                };
                if u32::from_be_bytes([priority[0], priority[1], priority[2], priority[3]]) & MAX_WINDOW == stream {
                    return Err(E::stream(stream, Reason::PROTOCOL_ERROR, "stream depends on itself"));
                }
                fragment = rest;
            }
            Ok(Frame::Headers {
                stream,
                end_stream: head.has(flag::END_STREAM),
                end_headers: head.has(flag::END_HEADERS),
                fragment,
            })
        }
        kind::PRIORITY => {
            on_stream("PRIORITY on stream 0")?;
            if payload.len() != 5 {
                return Err(E::stream(stream, Reason::FRAME_SIZE_ERROR, "PRIORITY not 5 bytes"));
            }
            if u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_WINDOW == stream {
                return Err(E::stream(stream, Reason::PROTOCOL_ERROR, "stream depends on itself"));
            }
            Ok(Frame::Priority)
        }
        kind::RST_STREAM => {
            on_stream("RST_STREAM on stream 0")?;
            exact(4, "RST_STREAM not 4 bytes")?;
            Ok(Frame::RstStream {
                stream,
                reason: Reason::from(read_u32(payload)),
            })
        }
        kind::SETTINGS => {
            on_connection("SETTINGS on a stream")?;
            if head.has(flag::ACK) {
                exact(0, "SETTINGS acknowledgement with a payload")?;
                return Ok(Frame::SettingsAck);
            }
            Settings::parse(payload).map(Frame::Settings)
        }
        kind::PUSH_PROMISE => {
            on_stream("PUSH_PROMISE on stream 0")?;
            Ok(Frame::PushPromise { stream })
        }
        kind::PING => {
            on_connection("PING on a stream")?;
            let payload: [u8; 8] = payload
                .try_into()
                .map_err(|_| E::connection(Reason::FRAME_SIZE_ERROR, "PING not 8 bytes"))?;
            Ok(Frame::Ping {
                ack: head.has(flag::ACK),
                payload,
            })
        }
        kind::GOAWAY => {
            on_connection("GOAWAY on a stream")?;
            let Some((fixed, debug)) = payload.split_first_chunk::<8>() else {
                return Err(E::connection(Reason::FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes"));
            };
            Ok(Frame::GoAway {
                last_stream: read_u32(fixed) & MAX_WINDOW,
                reason: Reason::from(read_u32(&fixed[4..])),
                debug,
            })
        }
        kind::WINDOW_UPDATE => {
            exact(4, "WINDOW_UPDATE not 4 bytes")?;
            let increment = read_u32(payload) & MAX_WINDOW;
            if increment == 0 {
                return Err(match stream {
                    0 => E::connection(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"),
                    _ => E::stream(stream, Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"),
                });
            }
            Ok(Frame::WindowUpdate { stream, increment })
        }
        kind::CONTINUATION => {
            on_stream("CONTINUATION on stream 0")?;
            Ok(Frame::Continuation {
                stream,
                end_headers: head.has(flag::END_HEADERS),
                fragment: payload,
            })
        }
        _ => Ok(Frame::Unknown),
    }
}

fn read_u32(bytes: &[u8]) -> u32 {
    match bytes.first_chunk::<4>() {
        Some(word) => u32::from_be_bytes(*word),
        None => 0,
    }
}

/// The payload without its padding (RFC 9113 §6.1, §6.2).
fn unpad<'a>(head: &Head, payload: &'a [u8]) -> Result<&'a [u8], FrameError> {
    if !head.has(flag::PADDED) {
        return Ok(payload);
    }
    let Some((&pad, rest)) = payload.split_first() else {
        return Err(FrameError::connection(
            Reason::FRAME_SIZE_ERROR,
            "padded frame without a pad length",
        ));
    };
    match rest.len().checked_sub(pad as usize) {
        Some(len) => Ok(&rest[..len]),
        None => Err(FrameError::connection(
            Reason::PROTOCOL_ERROR,
            "padding longer than the payload",
        )),
    }
}

/// Gathers a header block that arrives as HEADERS plus CONTINUATION frames.
///
/// Nothing but CONTINUATION frames for the same stream may come between
/// them (RFC 9113 §6.10), and the block is bounded: a peer sending endless
/// CONTINUATION frames (CVE-2024-27316) is stopped at `max_block` bytes.
#[derive(Debug, Default)]
pub(crate) struct BlockAssembler {
    open: Option<OpenBlock>,
    fragments: Vec<u8>,
}

#[derive(Debug)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
}

/// A complete header block.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Block<'a> {
    pub(crate) stream: u32,
    pub(crate) end_stream: bool,
    pub(crate) block: &'a [u8],
}

impl BlockAssembler {
    /// Checks that `frame` may come now: while a block is open, only its
    /// CONTINUATION may.
    pub(crate) fn check_order(&self, frame: &Frame<'_>) -> Result<(), FrameError> {
        match (&self.open, frame) {
            (Some(open), Frame::Continuation { stream, .. }) if *stream == open.stream => Ok(()),
            (Some(_), _) => Err(FrameError::connection(
                Reason::PROTOCOL_ERROR,
                "frame inside a header block that is not its CONTINUATION",
            )),
            (None, Frame::Continuation { .. }) => Err(FrameError::connection(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without a header block to continue",
            )),
            (None, _) => Ok(()),
        }
    }

    /// Takes a HEADERS frame: the whole block at once when it has
    /// END_HEADERS (the usual case, not copied), else `None` until the last
    /// CONTINUATION.
    pub(crate) fn headers<'a>(
        &'a mut self,
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        fragment: &'a [u8],
        max_block: usize,
    ) -> Result<Option<Block<'a>>, FrameError> {
        if end_headers {
            return Ok(Some(Block {
                stream,
                end_stream,
                block: fragment,
            }));
        }
        self.fragments.clear();
        self.append(fragment, max_block)?;
        self.open = Some(OpenBlock { stream, end_stream });
        Ok(None)
    }

    /// Takes a CONTINUATION frame (already checked by [`Self::check_order`]).
    pub(crate) fn continuation(
        &mut self,
        end_headers: bool,
        fragment: &[u8],
        max_block: usize,
    ) -> Result<Option<Block<'_>>, FrameError> {
        self.append(fragment, max_block)?;
        if !end_headers {
            return Ok(None);
        }
        match self.open.take() {
            Some(open) => Ok(Some(Block {
                stream: open.stream,
                end_stream: open.end_stream,
                block: &self.fragments,
            })),
            None => Err(FrameError::connection(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without a header block to continue",
            )),
        }
    }

    fn append(&mut self, fragment: &[u8], max_block: usize) -> Result<(), FrameError> {
        if self.fragments.len() + fragment.len() > max_block {
            self.open = None;
            self.fragments = Vec::new();
            return Err(FrameError::connection(
                Reason::ENHANCE_YOUR_CALM,
                "header block larger than the header list limit allows",
            ));
        }
        self.fragments.extend_from_slice(fragment);
        Ok(())
    }
}

/// Writes a frame header.
pub(crate) fn write_head(out: &mut Vec<u8>, length: usize, kind: u8, flags: u8, stream: u32) {
    let length = u32::try_from(length).unwrap_or(u32::MAX).min(MAX_MAX_FRAME_SIZE);
    out.extend_from_slice(&length.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
}

/// Writes a frame header whose length is filled in later by
/// [`finish_frame`], once the payload written after it is known.
pub(crate) fn start_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32) -> usize {
    let start = out.len();
    write_head(out, 0, kind, flags, stream);
    start
}

/// Sets the length of the frame begun at `start` to what follows its head.
pub(crate) fn finish_frame(out: &mut [u8], start: usize) {
    let length = out.len().saturating_sub(start + HEAD_LEN);
    let length = u32::try_from(length).unwrap_or(u32::MAX).min(MAX_MAX_FRAME_SIZE);
    if let Some(field) = out.get_mut(start..start + 3) {
        field.copy_from_slice(&length.to_be_bytes()[1..]);
    }
}

/// Writes a DATA frame.
pub(crate) fn write_data(out: &mut Vec<u8>, stream: u32, end_stream: bool, data: &[u8]) {
    let flags = if end_stream { flag::END_STREAM } else { 0 };
    write_head(out, data.len(), kind::DATA, flags, stream);
    out.extend_from_slice(data);
}

/// Writes a SETTINGS acknowledgement.
pub(crate) fn write_settings_ack(out: &mut Vec<u8>) {
    write_head(out, 0, kind::SETTINGS, flag::ACK, 0);
}

/// Writes a PING, or its acknowledgement.
pub(crate) fn write_ping(out: &mut Vec<u8>, ack: bool, payload: [u8; 8]) {
    write_head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(&payload);
}

/// Writes a WINDOW_UPDATE.
pub(crate) fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.extend_from_slice(&(increment & MAX_WINDOW).to_be_bytes());
}

/// Writes a RST_STREAM.
pub(crate) fn write_rst_stream(out: &mut Vec<u8>, stream: u32, reason: Reason) {
    write_head(out, 4, kind::RST_STREAM, 0, stream);
    out.extend_from_slice(&u32::from(reason).to_be_bytes());
}

/// Writes a GOAWAY.
pub(crate) fn write_goaway(out: &mut Vec<u8>, last_stream: u32, reason: Reason, debug: &[u8]) {
    write_head(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&u32::from(reason).to_be_bytes());
    out.extend_from_slice(debug);
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
