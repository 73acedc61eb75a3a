//! gRPC-Web framing as pure functions over bytes: the request-side frame
//! scanner that checks every length prefix and flags byte against the limit
//! while the bytes stream past (it never buffers or copies a message), the
//! trailer frame written at the end of a response (flag `0x80`, 4-byte
//! big-endian length, lower-case `key:value\r\n` lines), and the errors a
//! malformed request body can produce, each with the gRPC code it is
//! answered with. Nothing here does I/O or decodes a protobuf message.

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

use crate::grpc_frame::{COMPRESSED, FrameError, HEADER_LEN};
use crate::status::{Code, Status};

/// The flags byte of the gRPC-Web trailer frame.
pub(crate) const TRAILER_FLAG: u8 = 0x80;

/// Why a gRPC-Web request body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RequestError {
    /// A byte outside the base64 alphabet, or padding where none may be.
    #[error("invalid base64 at byte offset {offset} of the request body: byte {byte:#04x}")]
    Base64 { byte: u8, offset: u64 },
    /// The text body ended one character into a 4-character base64 group.
    #[error("the request body ends inside a base64 group at byte offset {offset}")]
    DanglingBase64 { offset: u64 },
    /// A frame flags byte with bits other than the compression bit.
    #[error("frame at byte offset {offset} has flags {flags:#04x}; only 0x00 and 0x01 are allowed")]
    Flags { flags: u8, offset: u64 },
    /// A length prefix above the limit, or a body that ends inside a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// No bytes at all: a gRPC-Web call sends one length-prefixed message.
    #[error("the request body is empty; a gRPC-Web call sends one length-prefixed message")]
    Empty,
}

impl RequestError {
    /// The status the client gets for this error.
    pub(crate) fn status(&self) -> Status {
        let code = match self {
            Self::Frame(FrameError::TooLarge { .. }) => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        };
        let mut message = format!("bad gRPC-Web request: {self}");
        if let Self::Frame(FrameError::TooLarge { .. }) = self {
            message.push_str(" (transcoding.max_request_body)");
        }
        Status::new(code, message)
    }
}

/// Where the scanner is in the frame stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Position {
    /// Inside a frame header, `have` of its 5 bytes seen.
    Header { have: usize, bytes: [u8; HEADER_LEN] },
    /// Inside a message of `len` bytes, `remaining` still to come.
    Message { len: u32, remaining: u32 },
}

/// Follows frame boundaries through a request body without holding any of
/// it: each length prefix is checked against the limit as soon as its
/// header is complete, each flags byte is checked, and the end of the body
/// must fall on a frame boundary.
#[derive(Clone, Debug)]
pub(crate) struct FrameScanner {
    limit: usize,
    position: Position,
    /// Bytes scanned so far.
    offset: u64,
    /// Offset of the frame being scanned (for error messages).
    frame_start: u64,
}

impl FrameScanner {
    /// A scanner that refuses messages longer than `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            position: Position::Header {
                have: 0,
                bytes: [0; HEADER_LEN],
            },
            offset: 0,
            frame_start: 0,
        }
    }

    /// Follows `chunk`, the next bytes of the frame stream.
    pub(crate) fn scan(&mut self, chunk: &[u8]) -> Result<(), RequestError> {
        let mut rest = chunk;
        while !rest.is_empty() {
            match &mut self.position {
                Position::Header { have, bytes } => {
                    let take = (HEADER_LEN - *have).min(rest.len());
                    bytes[*have..*have + take].copy_from_slice(&rest[..take]);
                    *have += take;
                    rest = &rest[take..];
                    if *have == HEADER_LEN {
                        let header = *bytes;
                        self.position = self.start_message(header)?;
                    }
                }
                Position::Message { remaining, .. } => {
                    let take = (*remaining as usize).min(rest.len());
                    // `take` fits in u32: it is at most `remaining`.
                    *remaining -= take as u32;
                    rest = &rest[take..];
                    if *remaining == 0 {
                        self.next_frame();
                    }
                }
            }
        }
        self.offset += chunk.len() as u64;
        Ok(())
    }

    fn start_message(&mut self, header: [u8; HEADER_LEN]) -> Result<Position, RequestError> {
        let flags = header[0];
        if flags & !COMPRESSED != 0 {
            return Err(RequestError::Flags {
                flags,
                offset: self.frame_start,
            });
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if len as usize > self.limit {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                limit: self.limit,
                offset: self.frame_start,
            }
            .into());
        }
        if len == 0 {
            self.frame_start += HEADER_LEN as u64;
            return Ok(Position::Header {
                have: 0,
                bytes: [0; HEADER_LEN],
            });
        }
        Ok(Position::Message { len, remaining: len })
    }

    fn next_frame(&mut self) {
        if let Position::Message { len, .. } = self.position {
            self.frame_start += HEADER_LEN as u64 + u64::from(len);
        }
        self.position = Position::Header {
            have: 0,
            bytes: [0; HEADER_LEN],
        };
    }

    /// The body ended here: it must hold at least one frame and end on a boundary.
    pub(crate) fn finish(&self) -> Result<(), RequestError> {
        match self.position {
            Position::Header { have: 0, .. } if self.offset == 0 => Err(RequestError::Empty),
            Position::Header { have: 0, .. } => Ok(()),
            Position::Header { have, .. } => Err(FrameError::Truncated {
                have,
                need: HEADER_LEN,
                offset: self.frame_start,
            }
            .into()),
            Position::Message { len, remaining } => Err(FrameError::Truncated {
                have: HEADER_LEN + (len - remaining) as usize,
                need: HEADER_LEN + len as usize,
                offset: self.frame_start,
            }
            .into()),
        }
    }

    /// True when everything scanned so far is whole frames, at least one.
    pub(crate) fn at_clean_end(&self) -> bool {
        self.offset > 0 && matches!(self.position, Position::Header { have: 0, .. })
    }
}

/// The gRPC-Web trailer frame for a response's trailers.
pub(crate) fn encode_trailers(trailers: &HeaderMap) -> Bytes {
    let len: usize = trailers
        .iter()
        .map(|(name, value)| name.as_str().len() + 1 + value.len() + 2)
        .sum();
    let mut frame = BytesMut::with_capacity(HEADER_LEN + len);
    frame.put_u8(TRAILER_FLAG);
    // A header block is bounded far below 4 GiB by the HTTP/2 header list limit.
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    for (name, value) in trailers {
        // `HeaderName`s are lower-case already, as gRPC-Web requires.
        frame.put_slice(name.as_str().as_bytes());
        frame.put_u8(b':');
        frame.put_slice(value.as_bytes());
        frame.put_slice(b"\r\n");
    }
    frame.freeze()
}

/// The client side of [`encode_trailers`], kept beside it so the round
/// trip is tested: `key:value` or `key: value` lines, `\r\n` or `\n`.
#[cfg(test)]
pub(crate) fn decode_trailers(block: &[u8]) -> Result<HeaderMap, String> {
    let mut trailers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| format!("trailer line without a colon: {line:?}"))?;
        let name = http::HeaderName::from_bytes(&line[..colon].to_ascii_lowercase()).map_err(|e| e.to_string())?;
        let value = line[colon + 1..].trim_ascii_start();
        let value = http::HeaderValue::from_bytes(value).map_err(|e| e.to_string())?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three frames: a message, an empty message, a compressed message.
    const STREAM: &[u8] = b"\x00\x00\x00\x00\x05hello\x00\x00\x00\x00\x00\x01\x00\x00\x00\x06world!";

    fn scan_parts(parts: &[&[u8]], limit: usize) -> Result<(), RequestError> {
        let mut scanner = FrameScanner::new(limit);
        for part in parts {
            scanner.scan(part)?;
        }
        scanner.finish()
    }

    #[test]
    fn frames_split_at_every_pair_of_offsets_scan_the_same() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let parts = [&STREAM[..i], &STREAM[i..j], &STREAM[j..]];
                assert_eq!(scan_parts(&parts, 16), Ok(()), "split at {i} and {j}");
            }
        }
        let mut scanner = FrameScanner::new(16);
        scanner.scan(STREAM).unwrap();
        assert!(scanner.at_clean_end());
    }

    #[test]
    fn every_proper_prefix_is_truncated_and_says_where() {
        // Frames start at 0, 10 and 15; a body may end only at 10, 15 or the end.
        for end in (1..STREAM.len()).filter(|end| ![10, 15].contains(end)) {
            let error = scan_parts(&[&STREAM[..end]], 16).unwrap_err();
            let RequestError::Frame(FrameError::Truncated { have, need, offset }) = error else {
                panic!("prefix of {end} bytes: {error:?}");
            };
            assert!(have < need, "prefix of {end} bytes");
            let expected = if end < 10 {
                0
            } else if end < 15 {
                10
            } else {
                15
            };
            assert_eq!(offset, expected, "prefix of {end} bytes");
        }
        let mut scanner = FrameScanner::new(16);
        scanner.scan(&STREAM[..12]).unwrap();
        assert!(!scanner.at_clean_end());
    }

    #[test]
    fn truncated_header_and_truncated_message_are_reported_with_offsets() {
        assert_eq!(
            scan_parts(&[b"\x00\x00\x00"], 16),
            Err(RequestError::Frame(FrameError::Truncated {
                have: 3,
                need: 5,
                offset: 0
            }))
        );
        assert_eq!(
            scan_parts(&[b"\x00\x00\x00\x00\x01a", b"\x00\x00\x00\x00\x04", b"ab"], 16),
            Err(RequestError::Frame(FrameError::Truncated {
                have: 7,
                need: 9,
                offset: 6
            }))
        );
        let status = scan_parts(&[b"\x00\x00"], 16).unwrap_err().status();
        assert_eq!(status.code, Code::InvalidArgument);
        assert!(status.message.contains("byte offset 0"), "{}", status.message);
    }

    #[test]
    fn oversized_prefix_is_refused_as_soon_as_its_header_is_complete() {
        let mut scanner = FrameScanner::new(16);
        for byte in [0u8, 0xff, 0xff, 0xff] {
            scanner.scan(&[byte]).unwrap();
        }
        let error = scanner.scan(&[0xff]).unwrap_err();
        assert_eq!(
            error,
            RequestError::Frame(FrameError::TooLarge {
                len: u64::from(u32::MAX),
                limit: 16,
                offset: 0
            })
        );
        let status = error.status();
        assert_eq!(status.code, Code::ResourceExhausted);
        assert!(status.message.contains("max_request_body"), "{}", status.message);
        // Exactly at the limit is fine; one more is not, and the offset names the frame.
        assert_eq!(scan_parts(&[b"\x00\x00\x00\x00\x02ab"], 2), Ok(()));
        assert_eq!(
            scan_parts(&[b"\x00\x00\x00\x00\x02ab\x00\x00\x00\x00\x03"], 2),
            Err(RequestError::Frame(FrameError::TooLarge {
                len: 3,
                limit: 2,
                offset: 7
            }))
        );
    }

    #[test]
    fn only_the_compression_flag_may_be_set() {
        assert_eq!(scan_parts(&[b"\x01\x00\x00\x00\x00"], 16), Ok(()));
        for flags in [0x02u8, 0x80, 0xff] {
            let frame = [flags, 0, 0, 0, 0];
            assert_eq!(scan_parts(&[&frame], 16), Err(RequestError::Flags { flags, offset: 0 }));
        }
    }

    #[test]
    fn an_empty_body_is_refused() {
        let error = scan_parts(&[], 16).unwrap_err();
        assert_eq!(error, RequestError::Empty);
        assert_eq!(error.status().code, Code::InvalidArgument);
        assert_eq!(scan_parts(&[b"", b""], 16), Err(RequestError::Empty));
        assert!(!FrameScanner::new(16).at_clean_end());
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn trailers_become_one_frame_of_lower_case_lines() {
        let map = trailers(&[
            ("grpc-status", "14"),
            ("grpc-message", "down%20now"),
            ("X-Failed-By", "b1"),
        ]);
        let frame = encode_trailers(&map);
        let lines = b"grpc-status:14\r\ngrpc-message:down%20now\r\nx-failed-by:b1\r\n";
        let mut expected = vec![TRAILER_FLAG, 0, 0, 0, lines.len() as u8];
        expected.extend_from_slice(lines);
        assert_eq!(&frame[..], &expected[..]);
        assert_eq!(decode_trailers(&frame[HEADER_LEN..]), Ok(map));
        assert_eq!(&encode_trailers(&HeaderMap::new())[..], b"\x80\x00\x00\x00\x00");
    }

    #[test]
    fn trailer_lines_parse_with_or_without_a_space_after_the_colon() {
        let expected = trailers(&[("grpc-status", "0"), ("grpc-message", "a: b")]);
        for block in [
            &b"grpc-status:0\r\ngrpc-message:a: b\r\n"[..],
            b"grpc-status: 0\r\ngrpc-message: a: b\r\n",
            b"Grpc-Status: 0\ngrpc-message:   a: b",
        ] {
            assert_eq!(decode_trailers(block), Ok(expected.clone()), "{block:?}");
        }
        assert!(decode_trailers(b"grpc-status 0\r\n").is_err());
        assert_eq!(decode_trailers(b""), Ok(HeaderMap::new()));
    }
}
