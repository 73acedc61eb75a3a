//! Fuzzes gRPC status headers: the input is percent-decoded as a
//! `grpc-message`, and, split at newlines, used as `grpc-status`,
//! `grpc-message` and `grpc-status-details-bin` to read a status and make the
//! REST error body. Nothing may panic (bad UTF-8, escapes cut short);
//! encoded text is a valid header value that decodes back to itself, a
//! status written to trailers reads back the same, and the error body is
//! JSON with the code and message, as checked inside
//! `grpc_edge::fuzzing::grpc_message`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::grpc_message(data);
});
