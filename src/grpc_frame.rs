//! gRPC length-prefixed message framing: a 1-byte flag, a 4-byte big-endian
//! length, then the message. The decoder is incremental (frames may be split
//! across, or packed into, any chunks) and checks every length against a
//! limit before it buffers anything, so an oversized or hostile prefix costs
//! nothing. Pure functions over bytes; front ends that need whole messages
//! (REST, gRPC-Web text) use it, native passthrough never does.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes in a frame header.
pub(crate) const HEADER_LEN: usize = 5;

/// The flag bit for a compressed message.
pub(crate) const COMPRESSED: u8 = 0x01;

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The flags byte (bit 0: compressed; 0x80 marks gRPC-Web trailers).
    pub(crate) flags: u8,
    /// The message bytes.
    pub(crate) data: Bytes,
}

/// Why a frame stream is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// A length prefix above the limit (checked before buffering).
    #[error("message of {len} bytes at byte offset {offset} exceeds the limit of {limit} bytes")]
    TooLarge { len: u64, limit: usize, offset: u64 },
    /// The stream ended inside a frame.
    #[error("stream ended inside a message: {have} of {need} bytes at byte offset {offset}")]
    Truncated { have: usize, need: usize, offset: u64 },
}

/// Incremental frame decoder.
pub(crate) struct FrameDecoder {
    buffer: BytesMut,
    limit: usize,
    /// Bytes of the stream consumed so far (for error offsets).
    offset: u64,
}

impl FrameDecoder {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            limit,
            offset: 0,
        }
    }

    /// Adds received bytes.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buffer[0];
        let len = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]);
        let len_usize = len as usize;
        if len_usize > self.limit {
            return Err(FrameError::TooLarge {
                len: u64::from(len),
                limit: self.limit,
                offset: self.offset,
            });
        }
        if self.buffer.len() < HEADER_LEN + len_usize {
            self.buffer.reserve(HEADER_LEN + len_usize - self.buffer.len());
            return Ok(None);
        }
        self.buffer.advance(HEADER_LEN);
        let data = self.buffer.split_to(len_usize).freeze();
        self.offset += (HEADER_LEN + len_usize) as u64;
        Ok(Some(Frame { flags, data }))
    }

    /// Call at end of stream: an error if a partial frame is left.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let need = if self.buffer.len() < HEADER_LEN {
            HEADER_LEN
        } else {
            HEADER_LEN + u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize
        };
        Err(FrameError::Truncated {
            have: self.buffer.len(),
            need,
            offset: self.offset,
        })
    }
}

/// Encodes one message as a frame.
pub(crate) fn encode(flags: u8, message: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(HEADER_LEN + message.len());
    frame.put_u8(flags);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(message);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_frames() -> Vec<u8> {
        let mut stream = encode(0, b"hello").to_vec();
        stream.extend_from_slice(&encode(0, b""));
        stream.extend_from_slice(&encode(1, b"world!"));
        stream
    }

    #[test]
    fn frames_split_at_every_offset_decode_the_same() {
        let stream = two_frames();
        for split in 0..=stream.len() {
            let mut decoder = FrameDecoder::new(1024);
            let mut frames = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                decoder.push(part);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            decoder.finish().unwrap();
            assert_eq!(
                frames,
                vec![
                    Frame {
                        flags: 0,
                        data: Bytes::from_static(b"hello")
                    },
                    Frame {
                        flags: 0,
                        data: Bytes::new()
                    },
                    Frame {
                        flags: 1,
                        data: Bytes::from_static(b"world!")
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_before_buffering() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            decoder.next_frame(),
            Err(FrameError::TooLarge {
                len: u32::MAX as u64,
                limit: 16,
                offset: 0
            })
        );
        assert!(
            decoder.buffer.capacity() < 1024,
            "nothing was reserved for the claimed length"
        );
    }

    #[test]
    fn truncated_header_and_body_are_reported() {
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[0, 0, 0]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated {
                have: 3,
                need: 5,
                offset: 0
            })
        );
        let mut decoder = FrameDecoder::new(16);
        decoder.push(&[0, 0, 0, 0, 4, b'a']);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(
            decoder.finish(),
            Err(FrameError::Truncated {
                have: 6,
                need: 9,
                offset: 0
            })
        );
        let empty = FrameDecoder::new(16);
        assert_eq!(empty.finish(), Ok(()));
    }
}
