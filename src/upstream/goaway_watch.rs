//! Notes the error code of every GOAWAY a backend sends, by watching the
//! frame boundaries of the bytes the HTTP/2 client reads.
//!
//! A backend that closes a connection with `GOAWAY(ENHANCE_YOUR_CALM)` while
//! requests it never read are still in its socket closes with a TCP reset.
//! The `h2` crate then ends the connection with that I/O error, not the
//! GOAWAY it read just before, and the gateway would count the calls lost
//! with it against a backend that only judged the gateway's traffic. So the
//! transport keeps its own record: [`FrameScan`] follows the 9-byte frame
//! headers of the inbound stream (never decoding anything else) and stores
//! the last GOAWAY's code where the connection's driver can read it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::relay::frame::{HEAD_LEN as HEADER_LEN, Head, kind::GOAWAY};

/// A GOAWAY payload starts with the last stream id, then the error code.
const GOAWAY_FIXED_LEN: usize = 8;

/// The last GOAWAY error code seen on a connection, shared between its
/// transport (which writes it) and its driver (which reads it).
#[derive(Clone, Debug, Default)]
pub(crate) struct LastGoAway(Arc<AtomicU64>);

impl LastGoAway {
    /// The error code of the last complete GOAWAY seen, if any.
    pub(crate) fn reason(&self) -> Option<h2::Reason> {
        // Stored plus one (in 64 bits, so every u32 code fits), so that 0
        // means "none" and NO_ERROR (0) is representable.
        let stored = self.0.load(Ordering::Acquire);
        let code = u32::try_from(stored.checked_sub(1)?).ok()?;
        Some(h2::Reason::from(code))
    }

    fn record(&self, code: u32) {
        self.0.store(u64::from(code) + 1, Ordering::Release);
    }
}

/// Follows frame boundaries across reads of any size.
#[derive(Debug, Default)]
pub(crate) struct FrameScan {
    header: [u8; HEADER_LEN],
    /// Bytes of `header` filled so far; a header is read whenever `payload_left` is 0.
    header_filled: usize,
    /// Payload bytes of the current frame not yet seen.
    payload_left: usize,
    /// The start of the current GOAWAY's payload, while it is one.
    goaway: Option<([u8; GOAWAY_FIXED_LEN], usize)>,
    last: LastGoAway,
}

impl FrameScan {
    /// Where this scanner records the last GOAWAY's code.
    pub(crate) fn last_goaway(&self) -> LastGoAway {
        self.last.clone()
    }

    /// Takes the next bytes of the inbound stream, in order.
    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left == 0 {
                let take = (HEADER_LEN - self.header_filled).min(data.len());
                self.header[self.header_filled..self.header_filled + take].copy_from_slice(&data[..take]);
                self.header_filled += take;
                data = &data[take..];
                if self.header_filled == HEADER_LEN {
                    self.header_filled = 0;
                    self.start_frame();
                }
                continue;
            }
            let take = self.payload_left.min(data.len());
            if let Some((fixed, filled)) = &mut self.goaway {
                let copy = (GOAWAY_FIXED_LEN - *filled).min(take);
                fixed[*filled..*filled + copy].copy_from_slice(&data[..copy]);
                *filled += copy;
                if *filled == GOAWAY_FIXED_LEN {
                    let code = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
                    self.last.record(code);
                    self.goaway = None;
                }
            }
            self.payload_left -= take;
            data = &data[take..];
            if self.payload_left == 0 {
                // A GOAWAY shorter than its fixed part is malformed; h2 rejects it.
                self.goaway = None;
            }
        }
    }

    fn start_frame(&mut self) {
        // `header` is whole here, so it always parses.
        let Some(head) = Head::parse(&self.header) else {
            return;
        };
        self.payload_left = head.length;
        self.goaway = (head.kind == GOAWAY && head.length > 0).then_some(([0; GOAWAY_FIXED_LEN], 0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
        let mut payload = last_stream.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(debug);
        frame(GOAWAY, 0, &payload)
    }

    /// A server's opening, a response with a payload that looks like frame
    /// headers (including a GOAWAY's), then a GOAWAY with debug data.
    fn stream_with_goaway(code: u32) -> Vec<u8> {
        let mut bytes = frame(0x4, 0, &[0, 3, 0, 0, 0, 100]); // SETTINGS
        bytes.extend(frame(0x4, 0, &[])); // SETTINGS ack, empty
        bytes.extend(frame(0x1, 1, &[0x88])); // HEADERS
        bytes.extend(frame(0x0, 1, &goaway(7, 0xb, b"fake"))); // DATA that looks like a GOAWAY
        bytes.extend(frame(0x6, 0, &[1; 8])); // PING
        bytes.extend(goaway(1, code, b"too_many_resets"));
        bytes
    }

    fn scan(chunks: &[&[u8]]) -> Option<h2::Reason> {
        let mut scan = FrameScan::default();
        let last = scan.last_goaway();
        for chunk in chunks {
            scan.feed(chunk);
        }
        last.reason()
    }

    #[test]
    fn finds_the_goaway_code_read_in_one_piece() {
        let bytes = stream_with_goaway(0xb);
        assert_eq!(scan(&[&bytes]), Some(h2::Reason::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn finds_the_goaway_code_however_the_reads_split_the_stream() {
        let bytes = stream_with_goaway(0xb);
        for split in 0..=bytes.len() {
            let (a, b) = bytes.split_at(split);
            assert_eq!(scan(&[a, b]), Some(h2::Reason::ENHANCE_YOUR_CALM), "split at {split}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(scan(&bytewise), Some(h2::Reason::ENHANCE_YOUR_CALM));
    }

    #[test]
    fn a_payload_that_looks_like_a_goaway_is_not_one() {
        let mut bytes = frame(0x0, 1, &goaway(7, 0xb, b""));
        bytes.extend(frame(0x1, 3, &[0x88]));
        assert_eq!(scan(&[&bytes]), None);
    }

    #[test]
    fn the_last_goaway_wins_and_no_error_is_a_code() {
        let mut bytes = goaway(u32::MAX >> 1, 0, b"");
        assert_eq!(scan(&[&bytes]), Some(h2::Reason::NO_ERROR));
        bytes.extend(goaway(5, 0xb, b""));
        assert_eq!(scan(&[&bytes]), Some(h2::Reason::ENHANCE_YOUR_CALM));
        // Unknown codes are kept exactly, the largest too (found by fuzzing).
        assert_eq!(scan(&[&goaway(1, u32::MAX, b"")]), Some(h2::Reason::from(u32::MAX)));
    }

    #[test]
    fn truncated_or_malformed_goaways_record_nothing() {
        let bytes = goaway(1, 0xb, b"");
        // Cut short: the code never arrives.
        assert_eq!(scan(&[&bytes[..bytes.len() - 1]]), None);
        // A GOAWAY whose length is shorter than its fixed part, then a normal frame.
        let mut short = frame(GOAWAY, 0, &[0, 0, 0, 1, 0, 0]);
        short.extend(frame(0x6, 0, &[0, 0, 0, 0, 0, 0, 0, 0xb]));
        assert_eq!(scan(&[&short]), None);
        assert_eq!(scan(&[&frame(GOAWAY, 0, &[])]), None);
    }

    #[test]
    fn large_frames_are_skipped_without_buffering_them() {
        let mut bytes = frame(0x0, 1, &vec![0x07; 70_000]);
        bytes.extend(goaway(1, 0x2, b""));
        let chunks: Vec<&[u8]> = bytes.chunks(4096).collect();
        assert_eq!(scan(&chunks), Some(h2::Reason::INTERNAL_ERROR));
    }
}
