//! Fuzzes the W3C `traceparent` header: the input is parsed as the header
//! value. Nothing may panic; the answer must be what a reference reading of
//! the W3C rules gives, and a trace that parses is continued with a valid
//! version-00 header carrying the same trace id and sampled flag, as checked
//! inside `grpc_edge::fuzzing::traceparent`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::traceparent(data);
});
