//! Fuzzes the wire printer (encoded response messages → JSON without a
//! `DynamicMessage`): the first input byte picks the message type and the
//! options; the rest is the encoded message. Nothing may panic; whatever
//! the wire printer prints, the `DynamicMessage` path must decode and print
//! as the same JSON, as checked inside `grpc_edge::fuzzing::wire_json`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::wire_json(data);
});
