//! Fuzzes the `grpc-timeout` header: the input is parsed as a header value,
//! and (its first byte a shift, the next twelve seconds and nanoseconds) made
//! into a duration that is encoded. Nothing may panic; a value that parses
//! is 1 to 8 digits and a unit and survives encoding exactly, and every
//! encoding parses back to no less than the duration and at most 1/99,999
//! more (or to the maximum, when above it), as checked inside
//! `grpc_edge::fuzzing::grpc_timeout`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::grpc_timeout(data);
});
