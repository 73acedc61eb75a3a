//! Base64 for `application/grpc-web-text`, streaming-safe in both
//! directions. Requests: a decoder that takes the body in whatever pieces
//! the connection delivers — split anywhere, inside a 4-character group
//! too — and accepts padding in the middle of the stream, because clients
//! encode each message on its own, padding included. Every rejected byte is
//! named by its offset in the body. Responses: each chunk is encoded on its
//! own, padded, so every chunk the client receives is valid base64 by itself
//! and no byte is held back waiting for the next chunk.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

use super::codec::RequestError;

/// Characters in a base64 group.
const GROUP: usize = 4;
/// Decoded bytes in a full base64 group.
const GROUP_BYTES: usize = 3;
/// Decode-table entry for a byte outside the alphabet.
const INVALID: u8 = 0xff;
/// Decode-table entry for `=`.
const PAD: u8 = 0xfe;

/// The standard alphabet's value for every byte (`INVALID`, `PAD` for the rest).
const DECODE: [u8; 256] = {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < alphabet.len() {
        table[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    table[b'=' as usize] = PAD;
    table
};

/// Encodes one response chunk, padded, so it decodes on its own.
pub(crate) fn encode_chunk(data: &[u8]) -> Bytes {
    Bytes::from(base64::engine::general_purpose::STANDARD.encode(data))
}

/// Incremental base64 decoder for a request body.
#[derive(Clone, Debug, Default)]
pub(crate) struct Base64Decoder {
    /// Sextets of the group in progress.
    group: [u8; GROUP],
    /// Characters of the group in progress (0..4).
    len: usize,
    /// `=` characters in the group in progress.
    pads: usize,
    /// Body bytes consumed before the current chunk.
    offset: u64,
}

impl Base64Decoder {
    /// Decodes the next piece of the body; a partial group is kept for the next call.
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<Bytes, RequestError> {
        let mut out = BytesMut::with_capacity((self.len + input.len()) / GROUP * GROUP_BYTES);
        let mut i = 0;
        // Finish the group the previous piece left open.
        while self.len != 0 && i < input.len() {
            self.push(input[i], i, &mut out)?;
            i += 1;
        }
        // Whole groups: four table lookups and three bytes out, unless the
        // group holds padding or a bad byte, which take the careful path.
        while i + GROUP <= input.len() {
            let [a, b, c, d] = [
                DECODE[input[i] as usize],
                DECODE[input[i + 1] as usize],
                DECODE[input[i + 2] as usize],
                DECODE[input[i + 3] as usize],
            ];
            if (a | b | c | d) < 64 {
                let bits = u32::from(a) << 18 | u32::from(b) << 12 | u32::from(c) << 6 | u32::from(d);
                out.put_slice(&bits.to_be_bytes()[1..]);
            } else {
                for (k, &byte) in input.iter().enumerate().skip(i).take(GROUP) {
                    self.push(byte, k, &mut out)?;
                }
            }
            i += GROUP;
        }
        while i < input.len() {
            self.push(input[i], i, &mut out)?;
            i += 1;
        }
        self.offset += input.len() as u64;
        Ok(out.freeze())
    }

    /// Takes one character at `index` in the current piece.
    fn push(&mut self, byte: u8, index: usize, out: &mut BytesMut) -> Result<(), RequestError> {
        let value = DECODE[byte as usize];
        let offset = self.offset + index as u64;
        let bad = || RequestError::Base64 { byte, offset };
        match value {
            INVALID => return Err(bad()),
            // Padding fills the last one or two places of a group.
            PAD if self.len < 2 => return Err(bad()),
            PAD => self.pads += 1,
            // Nothing but padding may follow padding within a group.
            _ if self.pads > 0 => return Err(bad()),
            _ => self.group[self.len] = value,
        }
        self.len += 1;
        if self.len == GROUP {
            self.emit(out);
        }
        Ok(())
    }

    /// Writes the bytes of the group in progress and starts a new one.
    fn emit(&mut self, out: &mut BytesMut) {
        let sextets = self.len - self.pads;
        let mut bits = 0u32;
        for (k, &sextet) in self.group[..sextets].iter().enumerate() {
            bits |= u32::from(sextet) << (18 - 6 * k);
        }
        // Two sextets carry one byte, three carry two, four carry three.
        let bytes = sextets * 6 / 8;
        out.put_slice(&bits.to_be_bytes()[1..1 + bytes]);
        self.group = [0; GROUP];
        self.len = 0;
        self.pads = 0;
    }

    /// True when no partial group is waiting.
    pub(crate) fn is_idle(&self) -> bool {
        self.len == 0
    }

    /// The end of the body: an unpadded last group of 2 or 3 characters is
    /// accepted; a lone character is an error.
    pub(crate) fn finish(&mut self) -> Result<Bytes, RequestError> {
        let sextets = self.len - self.pads;
        match sextets {
            0 if self.len == 0 => Ok(Bytes::new()),
            0 | 1 => Err(RequestError::DanglingBase64 {
                offset: self.offset - self.len as u64,
            }),
            _ => {
                let mut out = BytesMut::with_capacity(GROUP_BYTES);
                self.emit(&mut out);
                Ok(out.freeze())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_pieces(pieces: &[&[u8]]) -> Result<Vec<u8>, RequestError> {
        let mut decoder = Base64Decoder::default();
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&decoder.decode(piece)?);
        }
        out.extend_from_slice(&decoder.finish()?);
        Ok(out)
    }

    /// Two frames, each encoded on its own with padding, as clients send them.
    const BODY: &[u8] = b"AAAAAAVoZWxsbw==AAAAAAEh";
    const DECODED: &[u8] = b"\x00\x00\x00\x00\x05hello\x00\x00\x00\x00\x01!";

    #[test]
    fn a_body_split_at_every_pair_of_offsets_decodes_the_same() {
        assert_eq!(decode_pieces(&[BODY]).unwrap(), DECODED);
        for i in 0..=BODY.len() {
            for j in i..=BODY.len() {
                let pieces = [&BODY[..i], &BODY[i..j], &BODY[j..]];
                assert_eq!(decode_pieces(&pieces).unwrap(), DECODED, "split at {i} and {j}");
            }
        }
        let one_by_one: Vec<&[u8]> = BODY.chunks(1).collect();
        assert_eq!(decode_pieces(&one_by_one).unwrap(), DECODED);
    }

    #[test]
    fn decoding_agrees_with_the_base64_crate_for_every_length() {
        let data: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        for len in 0..data.len() {
            let encoded = encode_chunk(&data[..len]);
            assert_eq!(encoded.len() % GROUP, 0);
            assert_eq!(decode_pieces(&[&encoded]).unwrap(), &data[..len], "length {len}");
        }
    }

    #[test]
    fn padding_may_appear_mid_stream_but_only_at_the_end_of_a_group() {
        assert_eq!(decode_pieces(&[b"QQ==QkM=RA=="]).unwrap(), b"ABCD");
        for (bad, offset) in [(&b"Q==="[..], 1), (b"=AAA", 0), (b"QQ=A", 3), (b"AAAAQ=", 5)] {
            assert_eq!(
                decode_pieces(&[bad]),
                Err(RequestError::Base64 {
                    byte: bad[offset],
                    offset: offset as u64
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_bad_byte_is_named_by_its_offset_in_the_whole_body() {
        let error = decode_pieces(&[b"AAAA", b"AA", b"A!AA"]).unwrap_err();
        assert_eq!(error, RequestError::Base64 { byte: b'!', offset: 7 });
        let status = error.status();
        assert_eq!(status.code, crate::status::Code::InvalidArgument);
        assert!(status.message.contains("byte offset 7"), "{}", status.message);
        for bad in [&b"AAA\nAAAA"[..], b"AA-_", b"AAA\x00", b"\xffAAA"] {
            assert!(
                matches!(decode_pieces(&[bad]), Err(RequestError::Base64 { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_unpadded_end_is_accepted_and_a_lone_character_is_not() {
        assert_eq!(decode_pieces(&[b"QUI"]).unwrap(), b"AB");
        assert_eq!(decode_pieces(&[b"QQ"]).unwrap(), b"A");
        assert_eq!(decode_pieces(&[b"QQ="]).unwrap(), b"A");
        assert_eq!(
            decode_pieces(&[b"AAAA", b"Q"]),
            Err(RequestError::DanglingBase64 { offset: 4 })
        );
        assert_eq!(decode_pieces(&[]).unwrap(), b"");
    }

    #[test]
    fn the_decoder_reports_whether_a_group_is_open() {
        let mut decoder = Base64Decoder::default();
        assert!(decoder.is_idle());
        decoder.decode(b"AAAAA").unwrap();
        assert!(!decoder.is_idle());
        decoder.decode(b"AAA").unwrap();
        assert!(decoder.is_idle());
    }
}
