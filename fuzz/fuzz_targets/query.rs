//! Fuzzes query strings: the input (UTF-8, lossily) is parsed as a query
//! string and the parameters are set as fields of a message with every
//! field type. Nothing may panic; each name comes out once, parameters
//! re-encoded parse back the same, an error points at a `%`, and the message
//! that results round-trips through JSON, as checked inside
//! `grpc_edge::fuzzing::query`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::query(data);
});
