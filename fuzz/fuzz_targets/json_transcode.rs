//! Fuzzes JSON request bodies: the first input byte picks the message type
//! (every field type, a recursive message, the well-known types) and the
//! codec options; the rest is parsed as the JSON body. Nothing may panic or
//! overflow the stack, however deep the nesting; a body that parses prints
//! as JSON that parses back to the same message, and its protobuf encoding
//! decodes to it too, as checked inside `grpc_edge::fuzzing::json_transcode`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::json_transcode(data);
});
