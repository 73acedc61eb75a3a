//! Fuzzes client-streaming REST bodies (NDJSON, or one JSON array of
//! objects): the first input byte says how many of the next bytes are piece
//! lengths, the rest is the body, split into messages in those pieces and
//! whole. Nothing may panic; the messages and the outcome may not depend on
//! the chunking, every message is one object within the size limit, and a
//! body serde_json reads as objects splits into exactly those objects, as
//! checked inside `grpc_edge::fuzzing::json_split`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::json_split(data);
});
