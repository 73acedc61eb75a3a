//! Fuzzes gRPC-Web text (base64) request bodies: the first input byte says
//! how many of the next bytes are piece lengths, the rest is the body, fed
//! to the decoder in those pieces and whole. Nothing may panic; the decoded
//! bytes (or the error and its offset) may not depend on the chunking and
//! must match a reference decoder, and the whole request body path (decode,
//! then frame checks) must accept exactly the bodies whose decoding is whole
//! frames, as checked inside `grpc_edge::fuzzing::grpc_web_text`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    grpc_edge::fuzzing::grpc_web_text(data);
});
