//! Splits a streamed request body into JSON objects as bytes arrive, for
//! REST client streams: either newline-delimited objects (NDJSON) or one
//! top-level array whose elements are emitted one by one. It only finds
//! boundaries (strings and escapes respected); parsing is the codec's job.
//! Each object is bounded by a size limit before it is buffered further.

use bytes::{Buf, Bytes, BytesMut};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Nothing but whitespace seen yet.
    Unknown,
    /// Objects one after another.
    Sequence,
    /// Inside `[ … ]`: `expect_value` after `[` or `,`.
    Array { expect_value: bool },
    /// After the closing `]`: only whitespace may follow.
    ArrayClosed,
}

/// Incremental splitter.
pub(crate) struct JsonSplitter {
    buffer: BytesMut,
    /// Bytes of `buffer` already scanned.
    scanned: usize,
    /// Offset in the whole body of `buffer[0]`, for error messages.
    base: usize,
    mode: Mode,
    /// Inside an object: nesting depth (0 = not in a value).
    depth: u32,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl JsonSplitter {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            scanned: 0,
            base: 0,
            mode: Mode::Unknown,
            depth: 0,
            in_string: false,
            escaped: false,
            limit,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete object, `Ok(None)` when more bytes are needed.
    pub(crate) fn next_value(&mut self) -> Result<Option<Bytes>, String> {
        while self.scanned < self.buffer.len() {
            let byte = self.buffer[self.scanned];
            let at = self.base + self.scanned;
            if self.depth > 0 {
                self.scanned += 1;
                // Before the value can end: its closing byte counts too.
                if self.scanned > self.limit {
                    return Err(format!(
                        "a message in the stream exceeds transcoding.max_request_body ({} bytes) at byte {at}",
                        self.limit
                    ));
                }
                if self.in_string {
                    match (self.escaped, byte) {
                        (true, _) => self.escaped = false,
                        (false, b'\\') => self.escaped = true,
                        (false, b'"') => self.in_string = false,
                        _ => {}
                    }
                } else {
                    match byte {
                        b'"' => self.in_string = true,
                        b'{' | b'[' => self.depth += 1,
                        b'}' | b']' => {
                            self.depth -= 1;
                            if self.depth == 0 {
                                let value = self.buffer.split_to(self.scanned).freeze();
                                self.base += self.scanned;
                                self.scanned = 0;
                                if let Mode::Array { .. } = self.mode {
                                    self.mode = Mode::Array { expect_value: false };
                                }
                                return Ok(Some(value));
                            }
                        }
                        _ => {}
                    }
                }
                continue;
            }
            // Between values.
            if byte.is_ascii_whitespace() {
                self.skip_one();
                continue;
            }
            match (self.mode, byte) {
                (Mode::Unknown, b'[') => {
                    self.mode = Mode::Array { expect_value: true };
                    self.skip_one();
                }
                (Mode::Unknown, b'{') => {
                    self.mode = Mode::Sequence;
                    self.start_value();
                }
                (Mode::Sequence, b'{') | (Mode::Array { expect_value: true }, b'{') => self.start_value(),
                (Mode::Array { expect_value: false }, b',') => {
                    self.mode = Mode::Array { expect_value: true };
                    self.skip_one();
                }
                (Mode::Array { .. }, b']') => {
                    self.mode = Mode::ArrayClosed;
                    self.skip_one();
                }
                (Mode::ArrayClosed, _) => {
                    return Err(format!("unexpected data after the closing ] at byte {at}"));
                }
                (Mode::Array { expect_value: false }, _) => return Err(format!("expected , or ] at byte {at}")),
                _ => {
                    return Err(format!("expected a JSON object for each message at byte {at}"));
                }
            }
        }
        Ok(None)
    }

    fn start_value(&mut self) {
        // Drop what was scanned before the value so the value starts the buffer.
        self.buffer.advance(self.scanned);
        self.base += self.scanned;
        self.scanned = 1;
        self.depth = 1;
    }

    fn skip_one(&mut self) {
        self.buffer.advance(self.scanned + 1);
        self.base += self.scanned + 1;
        self.scanned = 0;
    }

    /// Call at the end of the body: an error if it stopped inside a value or an unclosed array.
    pub(crate) fn finish(&mut self) -> Result<(), String> {
        let end = self.base + self.buffer.len();
        if self.depth > 0 {
            return Err(format!("the body ended inside a message at byte {end}"));
        }
        if let Mode::Array { .. } = self.mode {
            return Err(format!("the body ended before the closing ] at byte {end}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(body: &[u8], cut: usize) -> Result<Vec<String>, String> {
        let mut splitter = JsonSplitter::new(1 << 20);
        let mut out = Vec::new();
        for part in [&body[..cut], &body[cut..]] {
            splitter.push(part);
            while let Some(v) = splitter.next_value()? {
                out.push(String::from_utf8(v.to_vec()).unwrap());
            }
        }
        splitter.finish()?;
        Ok(out)
    }

    #[test]
    fn ndjson_and_arrays_split_the_same_at_every_offset() {
        let expected = vec![
            r#"{"a":"x}\"{"}"#.to_string(),
            r#"{"b":[1,{"c":2}]}"#.to_string(),
            "{}".to_string(),
        ];
        let ndjson = b"{\"a\":\"x}\\\"{\"}\n{\"b\":[1,{\"c\":2}]}\n\n{}\n";
        let array = b" [ {\"a\":\"x}\\\"{\"} , {\"b\":[1,{\"c\":2}]},{}] \n";
        for body in [&ndjson[..], &array[..]] {
            for cut in 0..=body.len() {
                assert_eq!(split_all(body, cut).unwrap(), expected, "cut at {cut}");
            }
        }
    }

    #[test]
    fn empty_bodies_have_no_messages() {
        assert_eq!(split_all(b"", 0).unwrap(), Vec::<String>::new());
        assert_eq!(split_all(b"  \n", 1).unwrap(), Vec::<String>::new());
        assert_eq!(split_all(b"[]", 1).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn malformed_streams_are_explained() {
        assert!(
            split_all(b"{\"a\":1", 3)
                .unwrap_err()
                .contains("ended inside a message")
        );
        assert!(split_all(b"[{}", 1).unwrap_err().contains("before the closing ]"));
        assert!(split_all(b"5", 0).unwrap_err().contains("expected a JSON object"));
        assert!(split_all(b"[{} {}]", 0).unwrap_err().contains("expected , or ]"));
        assert!(split_all(b"[{}] {}", 0).unwrap_err().contains("after the closing ]"));
        assert!(split_all(b"{},{}", 0).unwrap_err().contains("at byte 2"));
    }

    #[test]
    fn oversized_messages_stop_early() {
        let mut splitter = JsonSplitter::new(16);
        splitter.push(b"{\"a\":\"0123456789012345678901234567890\"}");
        assert!(splitter.next_value().unwrap_err().contains("exceeds"));
    }

    #[test]
    fn the_limit_counts_the_closing_brace() {
        // Found by fuzzing (fuzz/fuzz_targets/json_split.rs): a message one
        // byte over the limit got through when its last byte closed it.
        for body in [&b"{\"a\":\"012345678\"}"[..], b"{\"b\x1f:[1\xff\xff\xff\xff\":\"}\"}"] {
            assert_eq!(body.len(), 17);
            let mut splitter = JsonSplitter::new(16);
            splitter.push(body);
            let error = splitter.next_value().unwrap_err();
            assert!(error.contains("exceeds") && error.ends_with("at byte 16"), "{error}");
            let mut splitter = JsonSplitter::new(17);
            splitter.push(body);
            assert_eq!(splitter.next_value().unwrap().as_deref(), Some(body));
        }
        let mut splitter = JsonSplitter::new(16);
        splitter.push(b"{\"a\":\"0\"}\n{\"a\":\"012345678\"}\n");
        assert_eq!(splitter.next_value().unwrap().as_deref(), Some(&b"{\"a\":\"0\"}"[..]));
        assert!(splitter.next_value().is_err());
    }
}
